"""Where things live in the object store: predictable keys grouped by conversation."""

from __future__ import annotations

from common.job import JobSpec, OutputFormat

CONTENT_TYPES: dict[OutputFormat, str] = {
    OutputFormat.PNG: "image/png",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.JPEG: "image/jpeg",
}
EXTENSIONS: dict[OutputFormat, str] = {
    OutputFormat.PNG: "png",
    OutputFormat.WEBP: "webp",
    OutputFormat.JPEG: "jpg",
}


def job_prefix(spec: JobSpec) -> str:
    """The folder holding one job's outputs, inside its conversation's folder."""
    return f"conversations/{spec.conversation_id}/{spec.job_id}"


def image_key(spec: JobSpec) -> str:
    """The key of a finished job's image."""
    return f"{job_prefix(spec)}/image.{EXTENSIONS[spec.output_format]}"


def manifest_key(spec: JobSpec) -> str:
    """The key of a finished job's provenance manifest; written last, after the image."""
    return f"{job_prefix(spec)}/manifest.json"


def upload_key(digest: str, extension: str) -> str:
    """The key of an uploaded input (a product photo, a mask), named by content hash."""
    return f"uploads/{digest[:2]}/{digest}.{extension}"
