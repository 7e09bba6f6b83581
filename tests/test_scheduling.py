"""schedule's options checked in the service, and id parsing as a usage error."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from followup_cli.scheduling import new_follow_up, parse_uuid
from followup_cli.settings import ConfigError

TOKEN = "0123456789abcdef" * 4


def options(**changed: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "text": "How is the fever?",
        "user_id": "parent-1",
        "conversation": None,
        "due_in": None,
        "due_at": None,
        "urgency": "routine",
        "token": None,
        "child_name": None,
        "provider_name": None,
    }
    return values | changed


def test_options_become_the_follow_up_the_app_would_write() -> None:
    """An --at without a zone is UTC, the token is normalised, the conversation canonical."""
    new = new_follow_up(
        **options(
            due_at="2026-11-28T14:30:00",
            token=TOKEN.upper(),
            conversation=" 3F2B8C1E-7A4D-4E0F-9A51-2C8D7E6F1B20 ",
            urgency="urgent",
        )
    )
    assert new.scheduled_for == datetime(2026, 11, 28, 14, 30, tzinfo=UTC)
    assert new.device_token == TOKEN
    assert new.conversation_id == "3f2b8c1e-7a4d-4e0f-9a51-2c8d7e6f1b20"
    assert new.urgency == "urgent"


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"due_in": "1h", "due_at": "2026-01-01T00:00:00Z"}, "give --in or --at, not both"),
        ({"urgency": "soon"}, "--urgency must be routine or urgent"),
        ({"text": "  "}, "--text must not be empty"),
        ({"due_in": "soon"}, "--in must be a number followed by"),
        ({"due_at": "tomorrow"}, "--at must be an ISO-8601 time"),
        ({"token": "abc"}, "--token must be an APNs device token"),
        ({"conversation": "nope"}, "--conversation must be a UUID"),
    ],
)
def test_bad_options_are_usage_errors(changed: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        new_follow_up(**options(**changed))


def test_a_malformed_id_is_a_usage_error_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="--id must be a UUID like 3f2b8c1e-..., got 'x'"):
        parse_uuid("x", "--id")
