"""Receiving an adapter upload: the raw request body streamed to a temp file under a size cap."""
from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from adamix.manifest import StorageFullError
from server.errors import InvalidInputError, PayloadTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError

UPLOAD_MEDIA_TYPE = "application/octet-stream"


def declared_over(content_length: str | None, limit: int) -> bool:
    """Whether a Content-Length header declares more than `limit` bytes (any number of digits)."""
    if content_length is None or not content_length.isdigit():
        return False
    return len(content_length) > 18 or int(content_length) > limit  # int() refuses 4,300+ digit strings


def check_upload_headers(request: Request, limit: int) -> None:
    """Refuse by headers alone, before a byte of the body is read: wrong media type, declared size over `limit`."""
    media = request.headers.get("content-type", UPLOAD_MEDIA_TYPE).split(";")[0].strip().lower()
    if media != UPLOAD_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(f"send the raw .safetensors bytes as {UPLOAD_MEDIA_TYPE}, not {media}",
                                        "content-type")
    declared = request.headers.get("content-length")
    if declared_over(declared, limit):
        raise PayloadTooLargeError(f"adapter upload of {declared} bytes exceeds {limit} bytes (setting "
                                   "max_upload_bytes)", "body", {"Connection": "close"})


async def stream_to_file(request: Request, path: Path, limit: int, timeout_s: float) -> int:
    """Write the body to `path` chunk by chunk; 413 as soon as it passes `limit` bytes, 408 past `timeout_s`.

    Returns the size.
    """
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            with open(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(f"adapter upload exceeds {limit} bytes (setting "
                                                   "max_upload_bytes)", "body", {"Connection": "close"})
                    f.write(chunk)
    except ClientDisconnect:
        raise InvalidInputError("the client disconnected before the upload finished", "body") from None
    except TimeoutError:
        raise RequestTimeoutError(f"the upload did not arrive within {timeout_s:g} s (setting upload_timeout_s)",
                                  "body", {"Connection": "close"}) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(f"the registry's storage is full while receiving the upload: {exc.strerror}; "
                                   "nothing was stored", "registry") from None
        raise
    return size
