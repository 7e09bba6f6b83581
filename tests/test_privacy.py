"""Lock-screen privacy: FOLLOWUPS_PUSH_BODY=generic, proved from the bytes APNs receives."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from typer.testing import CliRunner

from followup_cli.alerts import LogAlerter
from followup_cli.cli import app
from followup_cli.db import Database
from followup_cli.delivery import send_due
from followup_cli.push.factory import make_pusher
from followup_cli.push.payload import build_request, payload_dict
from followup_cli.repository import DueFollowUp
from followup_cli.settings import DEFAULT_GENERIC_TEXT, ConfigError, Settings, from_env
from tests.fakes.apns import FakeAPNs
from tests.helpers import TOKEN_A, apns_env, app_row, messages

runner = CliRunner()
# Nothing in it is also in the generic text, the title or the payload's keys, so any
# leaked piece of it shows up in the bytes.
TEXT = "Is Zoë's amoxicillin rash spreading? \U0001f912 Reply with a photo"
CHILD = "Zoë"


def pieces(text: str, size: int = 5) -> set[str]:
    """Every run of `size` characters of the text, lower-cased."""
    lowered = text.lower()
    return {lowered[i : i + size] for i in range(len(lowered) - size + 1)}


def leaked(raw: bytes, text: str) -> set[str]:
    shown = raw.decode().lower()
    return {piece for piece in pieces(text) if piece in shown}


def test_generic_body_sends_no_part_of_the_message(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """generic: the fixed text goes out with mutable-content; the in-app message is whole."""
    fid = app_row(db, display_text=TEXT, child_name=CHILD, provider_name="Chen")
    pusher = make_pusher(replace(apns_settings, push_body="generic"))
    try:
        report = send_due(db, pusher, replace(apns_settings, push_body="generic"), LogAlerter())
    finally:
        pusher.close()
    assert (report.sent, report.pushed) == (1, 1)
    [push] = apns.requests
    assert push.status == 200
    assert leaked(push.body, TEXT) == set()
    assert CHILD.lower().encode() not in push.body.lower()
    assert push.payload is not None
    assert push.payload["aps"]["alert"] == {
        "title": "Follow-up from Dr. Chen",
        "body": DEFAULT_GENERIC_TEXT,
    }
    assert push.payload["aps"]["mutable-content"] == 1
    assert push.payload["follow_up_id"] == fid  # what the app's extension fetches by
    [message] = messages(db, fid)
    assert message.message_content == TEXT


def test_full_body_is_the_default_and_has_no_mutable_content(
    db: Database, apns_settings: Settings, apns: FakeAPNs
) -> None:
    """full (the default): the message is the body, as the app team asked."""
    assert Settings().push_body == "full"
    app_row(db, display_text=TEXT)
    pusher = make_pusher(apns_settings)
    try:
        send_due(db, pusher, apns_settings, LogAlerter())
    finally:
        pusher.close()
    [push] = apns.requests
    assert push.payload is not None
    assert push.payload["aps"]["alert"]["body"] == TEXT
    assert "mutable-content" not in push.payload["aps"]
    assert leaked(push.body, TEXT) == pieces(TEXT)  # the check above can see a leak


def test_dry_run_prints_the_payload_that_then_goes_out(
    db_url: str, db: Database, apns: FakeAPNs
) -> None:
    """test-send --dry-run shows the generic payload exactly as the real send delivers it."""
    fid = app_row(db, display_text=TEXT, child_name=CHILD, device_token=TOKEN_A)
    env = {
        **apns_env(apns),
        "FOLLOWUPS_PUSH_BODY": "generic",
        "FOLLOWUPS_PUSH_GENERIC_TEXT": "Nouveau message de votre équipe soignante",
    }
    dry = runner.invoke(app, ["--database-url", db_url, "test-send", fid, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert apns.requests == []
    printed = printed_payload(dry.stdout)
    assert leaked(dry.stdout.encode(), TEXT) == set()
    sent = runner.invoke(app, ["--database-url", db_url, "test-send", fid], env=env)
    assert sent.exit_code == 0, sent.output
    [push] = apns.requests
    assert printed == push.payload
    assert printed["aps"]["alert"]["body"] == "Nouveau message de votre équipe soignante"
    assert printed["aps"]["mutable-content"] == 1


def printed_payload(stdout: str) -> Any:
    return json.loads(stdout.split("payload:\n", 1)[1].split("\nattempt", 1)[0])


def test_one_builder_decides_the_body() -> None:
    """build_request: the message or the fixed text; mutable-content only with the latter."""
    f = DueFollowUp(
        id="f",
        conversation_id="c",
        user_id="u",
        scheduled_for=None,  # type: ignore[arg-type]
        urgency="urgent",
        display_text=TEXT,
        device_token=TOKEN_A,
        provider_name=None,
        in_app_only=False,
    )
    full = build_request(f, TOKEN_A, Settings())
    generic = build_request(f, TOKEN_A, Settings(push_body="generic", push_generic_text="Hi"))
    assert (full.body, full.mutable_content) == (TEXT, False)
    assert (generic.body, generic.mutable_content) == ("Hi", True)
    assert payload_dict(generic)["aps"]["mutable-content"] == 1
    assert "mutable-content" not in payload_dict(full)["aps"]
    assert generic.priority == full.priority == "10"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("full", DEFAULT_GENERIC_TEXT)),
        ({"FOLLOWUPS_PUSH_BODY": "GENERIC"}, ("generic", DEFAULT_GENERIC_TEXT)),
        ({"FOLLOWUPS_PUSH_GENERIC_TEXT": "  "}, ("full", DEFAULT_GENERIC_TEXT)),
        ({"FOLLOWUPS_PUSH_GENERIC_TEXT": " New message "}, ("full", "New message")),
    ],
)
def test_push_body_settings(env: dict[str, str], expected: tuple[str, str]) -> None:
    """Case-insensitive mode; a blank generic text falls back to the default."""
    s = from_env(env)
    assert (s.push_body, s.push_generic_text) == expected


def test_unknown_push_body_is_a_usage_error() -> None:
    """Anything but full or generic: one line, exit 2."""
    with pytest.raises(ConfigError) as info:
        from_env({"FOLLOWUPS_PUSH_BODY": "partial"})
    assert str(info.value) == "FOLLOWUPS_PUSH_BODY must be one of full, generic, got 'partial'"
    result = runner.invoke(app, ["stats"], env={"FOLLOWUPS_PUSH_BODY": "partial"})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"Error: {info.value}"]
