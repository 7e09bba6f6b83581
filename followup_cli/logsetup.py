"""Logging: human-readable or JSON lines on stderr.

Third-party loggers that print request URLs (which contain device tokens) or whole
payloads (message text) are capped at WARNING whatever the level asked for:
pyapns-client logs the payload and token at DEBUG, httpx the URL at INFO, google-auth
the token request and answer (the access token) at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

NOISY_LOGGERS = (
    "pyapns_client",
    "httpx",
    "httpcore",
    "hpack",
    "h2",
    "backoff",
    "alembic",
    "google",
    "urllib3",
    "requests",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(level: int = logging.INFO, fmt: str = "text") -> None:
    handler: logging.Handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    handler._followups = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_followups", False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
