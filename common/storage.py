"""One object-store interface with two adapters: S3 (any endpoint) and a local directory.

Every write is whole-or-nothing (S3 PUTs are atomic; the local adapter writes a temp
file and renames it), so a job killed mid-upload never leaves a half-written object,
and writing the same key twice leaves exactly one object.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from common.errors import ConfigError, ObjectNotFound, ObjectTooLarge, StorageError
from common.settings import Settings


class ObjectStore(Protocol):
    """Where images, masks and manifests live, addressed by string keys."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """Return the object's bytes; raise ``ObjectNotFound`` if there is none.

        With ``max_bytes``, a larger object is ``ObjectTooLarge``, refused before its
        body is read.
        """

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def keys(self, prefix: str) -> list[str]:
        """The keys stored under ``prefix`` (a folder ending in ``/``), sorted."""

    def url(self, key: str, expires_s: int) -> str:
        """A URL a client can fetch the object from (presigned for S3)."""

    def describe(self) -> str:
        """A human-readable location, without credentials."""


class LocalStore:
    """Objects as files under a root directory: the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"storage key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write via a temp file and an atomic rename."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """Read the file behind ``key`` (size checked first)."""
        try:
            path = self._path(key)
            if max_bytes is not None:
                _check_size(key, path.stat().st_size, max_bytes)
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"no object at {key!r} in {self.describe()}") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise ObjectNotFound(f"no object at {key!r} in {self.describe()}") from None
            raise StorageError(f"cannot read {key!r} from {self.describe()}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        try:
            return self._path(key).is_file()
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # no file can have that name
                return False
            raise StorageError(f"cannot check {key!r} in {self.describe()}: {exc}") from exc

    def keys(self, prefix: str) -> list[str]:
        """The files under ``prefix``, as keys, sorted (temporary files left out)."""
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return sorted(path.relative_to(self.root).as_posix() for path in folder.rglob("*")
                      if path.is_file() and not path.name.startswith(".part-"))

    def url(self, key: str, expires_s: int) -> str:
        """A ``file://`` URL; local files need no signature."""
        return self._path(key).as_uri()

    def describe(self) -> str:
        """The directory path."""
        return str(self.root)


class S3Store:
    """Objects in an S3 bucket (AWS, Ceph RGW, MinIO...), through boto3."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """One PUT: S3 makes it visible whole or not at all."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except Exception as exc:  # botocore raises many unrelated types
            raise StorageError(f"cannot write {key!r} to {self.describe()}: {exc}") from exc

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """GET the object; a missing key is ``ObjectNotFound``.

        With ``max_bytes``, the response's length is checked before the body is read.
        """
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            if max_bytes is not None:
                length = int(response.get("ContentLength") or 0)
                if length > max_bytes:
                    response["Body"].close()
                    _check_size(key, length, max_bytes)
                body: bytes = response["Body"].read(max_bytes + 1)
                _check_size(key, len(body), max_bytes)
                return body
            body = response["Body"].read()
            return body
        except ObjectTooLarge:
            raise
        except Exception as exc:
            if _is_missing(exc):
                raise ObjectNotFound(f"no object at {key!r} in {self.describe()}") from None
            raise StorageError(f"cannot read {key!r} from {self.describe()}: {exc}") from exc

    def exists(self, key: str) -> bool:
        """HEAD the object."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise StorageError(f"cannot check {key!r} in {self.describe()}: {exc}") from exc

    def keys(self, prefix: str) -> list[str]:
        """LIST the objects under ``prefix`` (every page), as keys of this store, sorted."""
        start = len(self._key(""))
        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                found += [item["Key"][start:] for item in page.get("Contents", [])]
        except Exception as exc:
            raise StorageError(f"cannot list {prefix!r} in {self.describe()}: {exc}") from exc
        return sorted(found)

    def url(self, key: str, expires_s: int) -> str:
        """A presigned GET URL valid for ``expires_s`` seconds."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_s,
        )
        return url

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (demos and tests; production pre-creates)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            self.client.create_bucket(Bucket=self.bucket)

    def describe(self) -> str:
        """``s3://bucket/prefix`` at the endpoint."""
        endpoint = self.client.meta.endpoint_url
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"


def _check_size(key: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ObjectTooLarge(key, size, max_bytes)


def _region(settings: Settings) -> str | None:
    """``ZQ_S3_REGION``, else ``AWS_REGION``, else None: boto3's chain decides.

    boto3 itself reads only ``AWS_DEFAULT_REGION``; ``AWS_REGION`` is what the AWS CLI v2,
    the other SDKs, ECS and Lambda use, and the CLI ranks it first.
    """
    return settings.s3_region or os.environ.get("AWS_REGION") or None


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def open_store(settings: Settings) -> ObjectStore:
    """The store named by ``settings.storage_url``: ``file://DIR`` or ``s3://BUCKET/PREFIX``."""
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"ZQ_STORAGE_URL names no bucket: {settings.storage_url!r}")
        return S3Store(s3_client(settings), parsed.netloc, parsed.path)
    raise ConfigError(f"ZQ_STORAGE_URL must start with file:// or s3://: {settings.storage_url!r}")


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint.

    Region and credentials are boto3's own chain (``AWS_REGION``, ``AWS_PROFILE``, SSO,
    ``AWS_SESSION_TOKEN``, instance roles...); ``ZQ_S3_REGION`` overrides the region only.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    # Custom endpoints need SigV4 named explicitly, or presigned URLs come out SigV2;
    # path-style addressing works on every S3 server, virtual hosts need DNS.
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    # Keys are never passed explicitly: that would drop a session token (temporary
    # credentials) and bypass profiles; boto3 reads AWS_ACCESS_KEY_ID... itself.
    try:
        # A fresh session reads the chain now; boto3's default session caches it forever.
        return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url,
                                              region_name=_region(settings), config=config)
    except (BotoCoreError, ValueError) as exc:  # an unknown AWS_PROFILE, a bad endpoint URL
        raise ConfigError(f"S3 settings: {exc}") from None
