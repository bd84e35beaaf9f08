"""Log output: rich lines for people (default) or one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

NOISY = ("httpx", "httpcore", "uvicorn.error", "aioquic", "qh3", "quic")
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's `fields`.

    Access-log lines carry their figures as `extra={"fields": {...}}`; they become top-level keys.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(verbose: bool, log_format: str, console: Console) -> None:
    """Configure the root logger once, at the edge."""
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(JsonFormatter())
    elif console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        # A pipe, a file, journald, `docker logs`: one record per line, never wrapped at rich's
        # 80 columns, so `grep` and `tail -f | grep` see whole lines.
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
