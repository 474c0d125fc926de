"""The one logging setup of `adamix serve`: the server's lines and uvicorn's (access and error) through one
handler, as text (the default) or JSON (`log_format=json`: one object a line), each naming its request.

A JSON line holds `ts` (UTC, ISO 8601), `level`, `logger`, `message`, and where known `request_id` (or, for a
line about a batch, `request_ids`), `task`, `version`, `status`, `duration_s` (since the request arrived),
`method`, `path`, `client` (uvicorn's access lines), `exception` (the traceback). Nothing here reads a header
or a body: API keys and inputs never reach a log line.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

from server.request_context import batch_request_ids, current

_FIELDS = ("request_id", "request_ids", "task", "version", "status", "duration_s", "method", "path", "client")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class RequestFields(logging.Filter):
    """Adds the current request's fields to every record (fields passed with `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx, batch = current(), batch_request_ids()
        found: dict = {}
        if batch:
            found["request_ids"] = list(batch)
        elif ctx is not None:
            found = {"request_id": ctx.request_id, "task": ctx.task, "version": ctx.version}
            if record.name == "uvicorn.access":  # logged as the response starts
                found["duration_s"] = round(time.perf_counter() - ctx.start, 6)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args  # uvicorn's '%s - "%s %s HTTP/%s" %d'
            found.update(client=client, method=method, path=path, status=status)
        for key, value in found.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        ids = getattr(record, "request_ids", None) or [getattr(record, "request_id", None)]
        record.request_tag = f" [{','.join(ids)}]" if ids[0] else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `log_format` (text or json) lines, each with its request's fields, to `stream`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestFields())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str, log_format: str) -> None:
    """`adamix serve`'s process: every log line (the server's, uvicorn's) through one handler, on stderr."""
    handler = log_handler(log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's lines go to the root's handler
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()  # transformers' warnings too
    hf_logging.enable_propagation()
    if log_format == "json":
        hf_logging.disable_progress_bar()  # a progress bar is no log line
    logging.captureWarnings(True)  # Python warnings as log lines
