"""The shared language of zimage-queue: job schema, settings, errors, storage, queueing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zimage-queue")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
