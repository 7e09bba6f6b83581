"""retry-failed's matching: reasons in any case (APNs writes Unregistered, FCM
UNREGISTERED), rows that failed on themselves left alone unless named, an unknown --id
as exit 1, and a notice when nothing matches."""

from __future__ import annotations

import uuid

from followup_cli.db import Database
from tests.helpers import cli, failed_row, fcm_token, row


def test_a_reason_matches_both_services_whatever_its_case(db_url: str, db: Database) -> None:
    apns = failed_row(db, "Unregistered")
    fcm = failed_row(db, "UNREGISTERED", device_token=fcm_token(1))
    other = failed_row(db, "ServiceUnavailable")
    result = cli(db_url, "retry-failed", "--reason", "unregistered", "--in-app-only")
    assert result.exit_code == 0, result.output
    assert "Requeued 2 failed follow-up(s) (in-app only, no push)." in result.stdout
    assert {row(db, fid).status for fid in (apns, fcm)} == {"scheduled"}
    assert row(db, other).status == "failed"


def test_held_back_names_no_single_service(db_url: str, db: Database) -> None:
    failed_row(db, "UNREGISTERED", device_token=fcm_token(2))
    result = cli(db_url, "retry-failed")
    assert "Held back 1: the push service rejected their device token" in result.stdout
    assert "APNs" not in result.stdout


def test_rows_that_failed_on_themselves_are_left_alone_unless_named(
    db_url: str, db: Database
) -> None:
    empty = failed_row(db, "empty_message")
    nobody = failed_row(db, "missing_recipient")
    transient = failed_row(db, "ServiceUnavailable")
    bare = cli(db_url, "retry-failed")
    assert bare.exit_code == 0, bare.output
    assert "Requeued 1 failed follow-up(s)." in bare.stdout
    assert (
        "Left alone 2 (empty_message, missing_recipient): they failed on the row itself"
        in bare.stdout
    )
    assert [row(db, f).status for f in (empty, nobody, transient)] == [
        "failed",
        "failed",
        "scheduled",
    ]
    by_reason = cli(db_url, "retry-failed", "--reason", "EMPTY_MESSAGE")
    assert "Requeued 1" in by_reason.stdout and row(db, empty).status == "scheduled"
    by_id = cli(db_url, "retry-failed", "--id", nobody)
    assert "Requeued 1" in by_id.stdout and row(db, nobody).status == "scheduled"


def test_an_unknown_id_is_exit_1_after_the_listing(db_url: str, db: Database) -> None:
    known = failed_row(db, "ServiceUnavailable")
    unknown = str(uuid.uuid4())
    result = cli(db_url, "retry-failed", "--id", known, "--id", unknown)
    assert result.exit_code == 1
    assert f"{unknown}  is not a failed follow-up" in result.stdout
    assert result.stderr.splitlines() == [
        "Error: 1 of the --id follow-ups are unknown, or neither failed nor held (listed above)"
    ]
    assert row(db, known).status == "scheduled"


def test_nothing_matched_says_so_with_the_reasons_on_record(db_url: str, db: Database) -> None:
    failed_row(db, "ServiceUnavailable")
    failed_row(db, "ServiceUnavailable")
    result = cli(db_url, "retry-failed", "--reason", "BadDeviceToken")
    assert result.exit_code == 0, result.output
    assert "Nothing matched; failed or held on record: ServiceUnavailable (2)." in result.stdout
