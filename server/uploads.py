"""Receiving an adapter upload: the raw request body streamed to a temp file under a size cap."""
from __future__ import annotations

from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from server.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError

UPLOAD_MEDIA_TYPE = "application/octet-stream"


def check_upload_headers(request: Request, limit: int) -> None:
    """Refuse by headers alone, before a byte of the body is read: wrong media type, declared size over `limit`."""
    media = request.headers.get("content-type", UPLOAD_MEDIA_TYPE).split(";")[0].strip().lower()
    if media != UPLOAD_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(f"send the raw .safetensors bytes as {UPLOAD_MEDIA_TYPE}, not {media}",
                                        "content-type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"adapter upload of {declared} bytes exceeds {limit} bytes (setting "
                                   "max_upload_bytes)", "body", {"Connection": "close"})


async def stream_to_file(request: Request, path: Path, limit: int) -> int:
    """Write the body to `path` chunk by chunk; 413 as soon as it passes `limit` bytes. Returns the size."""
    size = 0
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"adapter upload exceeds {limit} bytes (setting max_upload_bytes)",
                                               "body", {"Connection": "close"})
                f.write(chunk)
    except ClientDisconnect:
        raise InvalidInputError("the client disconnected before the upload finished", "body") from None
    return size
