"""The one source of "now" (UTC, timezone-aware). Tests freeze it with freezegun."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
