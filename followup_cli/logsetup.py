"""Logging: human-readable or JSON lines on stderr.

Third-party loggers that print request URLs (which contain device tokens) or whole
payloads (message text) are capped at WARNING whatever the level asked for:
pyapns-client logs the payload and token at DEBUG, httpx the URL at INFO, google-auth
the token request and answer (the access token) at DEBUG.

Secrets registered with `hide` (the database password, when the engine is built) are
replaced by *** in every log line, and in the error lines that go through `scrub`.
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

# What no log line or error message may show, longest first.
_HIDDEN: list[str] = []


def hide(*secrets: str) -> None:
    """From now on, show these texts as *** wherever `scrub` is applied."""
    for secret in secrets:
        if secret and secret not in _HIDDEN:
            _HIDDEN.append(secret)
    _HIDDEN.sort(key=len, reverse=True)


def scrub(text: str) -> str:
    """The text with every registered secret replaced by ***."""
    for secret in _HIDDEN:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # Scrubbed before JSON escapes a secret's quotes or backslashes.
            "msg": scrub(record.getMessage()),
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

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


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
