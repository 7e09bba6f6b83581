"""Refusals that every row meets, on PostgreSQL, as the least-privilege runtime role that
`followups db grants` sets up: an app trigger running as that role on a table it may not
write, row level security on follow_up_messages without a policy for it, and INSERT on
follow_up_attempts revoked (as an upgrade might).

Each case runs the real `followups send-due` twice, as cron does, through the fake APNs,
with every lease expired in between: every pushed follow-up is pushed exactly once, ends
failed (database_rejected) or held, the first run exits 1 with one line that names the
table and the fix, and the second run pushes nothing. `db check --role` names each of
these causes before they bite.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from followup_cli.cli import app
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_attempts, follow_up_requests
from followup_cli.vocabulary import FailureReason
from tests.fakes.apns import FakeAPNs
from tests.fakes.webhook import FakeWebhook
from tests.helpers import (
    RUNTIME_ROLE,
    Runtime,
    apns_env,
    due_rows,
    ensure_role,
    followups,
    messages,
    row,
    run_sql,
    runtime_url,
)

pytestmark = pytest.mark.postgres
runner = CliRunner()
r = follow_up_requests.c
ROLE = f'"{RUNTIME_ROLE}"'

# An app trigger that runs as the invoker (the runtime role, during send-due) and writes
# a table the runtime role has no grant on.
REVIEW_TRIGGER = (
    """CREATE FUNCTION app_review_answered() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE provider_review_requests SET schedule_followup = false
        WHERE conversation_id = NEW.conversation_id;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER app_messages_review AFTER INSERT ON follow_up_messages "
    "FOR EACH ROW EXECUTE FUNCTION app_review_answered()",
)


@pytest.fixture
def runtime(pg_db_url: str) -> Runtime:
    """The migrated database with the runtime role's grants and policies applied."""
    ensure_role(pg_db_url, RUNTIME_ROLE, login=True)
    grants = runner.invoke(app, ["--database-url", pg_db_url, "db", "grants", RUNTIME_ROLE])
    assert grants.exit_code == 0, grants.output
    run_sql(pg_db_url, grants.stdout)
    return Runtime(owner_url=pg_db_url, url=runtime_url(pg_db_url, "direct"), grants=grants.stdout)


@pytest.fixture
def owner(runtime: Runtime) -> Any:
    db = Database(runtime.owner_url)
    yield db
    db.close()


def send_due(
    runtime: Runtime, owner: Database, apns: FakeAPNs, webhook: FakeWebhook, **env: str
) -> subprocess.CompletedProcess[str]:
    """One cron run as the runtime role, after every lease still held has run out."""
    with owner.engine.begin() as conn:
        conn.execute(
            update(follow_up_requests)
            .where(r.claimed_by.is_not(None))
            .values(claim_expires_at=utcnow() - timedelta(seconds=1))
        )
    return followups(
        runtime.url,
        "send-due",
        env={**apns_env(apns), "FOLLOWUPS_ALERT_WEBHOOK_URL": webhook.url, **env},
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def stop_line(cause: str, fix: str, aside: int) -> str:
    return (
        f"Error: the database refused to record deliveries: {cause}; run stopped claiming, "
        f"{aside} follow-up(s) set aside (failed or held as database_rejected, not pushed "
        f"again). Fix: {fix}; then `followups retry-failed --reason database_rejected`."
    )


def pushes(apns: FakeAPNs, ids: list[str]) -> dict[str, int]:
    counts = Counter(p.headers.get("apns-collapse-id") for p in apns.requests)
    return {fid: counts[fid] for fid in ids}


def attempts_of(db: Database, ids: list[str]) -> int:
    with db.engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(follow_up_attempts.c.follow_up_id.in_(ids))
        ).scalar_one()


def run_twice_and_check(
    runtime: Runtime,
    owner: Database,
    apns: FakeAPNs,
    webhook: FakeWebhook,
    ids: list[str],
    *,
    cause: str,
    fix: str,
) -> None:
    """The common story: run 1 pushes each once and sets each aside, exit 1 with the one
    line; run 2, leases expired, pushes nothing."""
    first = send_due(runtime, owner, apns, webhook)
    assert first.returncode == 1, first.stdout + first.stderr
    assert error_lines(first) == [stop_line(cause, fix, len(ids))]
    assert f"claimed {len(ids)}, sent 0" in first.stdout

    second = send_due(runtime, owner, apns, webhook)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "claimed 0" in second.stdout
    assert error_lines(second) == []

    assert pushes(apns, ids) == dict.fromkeys(ids, 1)
    assert sorted(apns.collapse_ids()) == sorted(ids)  # each accepted once
    for fid in ids:
        stored = row(owner, fid)
        assert stored.failure_reason == FailureReason.DATABASE_REJECTED
        assert (stored.status == "failed") or (stored.held_at is not None)
        assert stored.claimed_by is None
        assert cause in stored.failure_detail
        # Already pushed: a requeue after the fix delivers it in-app only.
        assert stored.in_app_only is True
        assert messages(owner, fid) == []
    [alert] = [t for t in webhook.texts() if "refused to record" in t]
    assert all(fid in alert for fid in ids)
    assert f"send-due stopped claiming: the database refuses every row ({cause})" in alert
    assert "Maya" not in alert


def test_invoker_trigger_writing_a_table_the_role_may_not_write_sets_rows_aside_once(
    runtime: Runtime, owner: Database, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A SECURITY INVOKER trigger on follow_up_messages updates provider_review_requests,
    which `db grants` does not cover: the line says what to grant, or SECURITY DEFINER."""
    run_sql(runtime.owner_url, ";".join(REVIEW_TRIGGER))
    ids = due_rows(owner, 6)

    run_twice_and_check(
        runtime,
        owner,
        apns,
        webhook,
        ids,
        cause="permission denied for table provider_review_requests in function "
        "app_review_answered (SQLSTATE 42501)",
        fix="grant UPDATE on provider_review_requests to the runtime role, or make the "
        "trigger function app_review_answered SECURITY DEFINER",
    )
    assert attempts_of(owner, ids) == len(ids)  # the attempts are on record

    # The fix named in the line, then retry-failed: in-app only, no second push.
    run_sql(runtime.owner_url, "ALTER FUNCTION app_review_answered() SECURITY DEFINER")
    retried = followups(runtime.url, "retry-failed", "--reason", FailureReason.DATABASE_REJECTED)
    assert retried.returncode == 0, retried.stderr
    after = send_due(runtime, owner, apns, webhook)
    assert after.returncode == 0, after.stderr
    assert f"sent {len(ids)} (0 pushed, {len(ids)} in-app only)" in after.stdout
    assert pushes(apns, ids) == dict.fromkeys(ids, 1)


def test_rls_on_messages_without_a_policy_for_the_role_sets_rows_aside_once(
    runtime: Runtime, owner: Database, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Row level security on both app tables; follow_up_requests has the runtime role's
    policy, follow_up_messages none: every message INSERT is refused."""
    run_sql(
        runtime.owner_url,
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;"
        f"DROP POLICY {ROLE} ON follow_up_messages;",
    )
    ids = due_rows(owner, 5)

    run_twice_and_check(
        runtime,
        owner,
        apns,
        webhook,
        ids,
        cause='new row violates row-level security policy for table "follow_up_messages" '
        "(SQLSTATE 42501)",
        fix="give the runtime role a policy on follow_up_messages that allows INSERT "
        "(`followups db grants ROLE` prints what it needs)",
    )


def test_insert_on_attempts_revoked_still_sets_rows_aside_once(
    runtime: Runtime, owner: Database, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The attempts cannot be written: the rows are marked failed all the same (without
    attempts), and after the grant is back a requeue delivers them in-app only."""
    run_sql(runtime.owner_url, f"REVOKE INSERT ON follow_up_attempts FROM {ROLE}")
    ids = due_rows(owner, 4)

    run_twice_and_check(
        runtime,
        owner,
        apns,
        webhook,
        ids,
        cause="permission denied for table follow_up_attempts (SQLSTATE 42501)",
        fix="grant INSERT on follow_up_attempts to the runtime role "
        "(`followups db grants ROLE` prints what it needs)",
    )
    assert attempts_of(owner, ids) == 0
    assert all(row(owner, fid).status == "failed" for fid in ids)

    # No attempt says they were pushed, yet the requeue does not push them again.
    run_sql(runtime.owner_url, runtime.grants)
    retried = followups(runtime.url, "retry-failed", "--reason", FailureReason.DATABASE_REJECTED)
    assert retried.returncode == 0, retried.stderr
    after = send_due(runtime, owner, apns, webhook)
    assert after.returncode == 0, after.stderr
    assert f"sent {len(ids)} (0 pushed, {len(ids)} in-app only)" in after.stdout
    assert pushes(apns, ids) == dict.fromkeys(ids, 1)
    assert all(len(messages(owner, fid)) == 1 for fid in ids)


def test_a_structural_refusal_stops_claiming_and_hands_back_what_was_claimed_ahead(
    runtime: Runtime, owner: Database, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Batches of 3 and 12 due: the first run stops claiming once it meets the refusal,
    instead of pushing the whole backlog only to set it aside; what it did not push is
    left scheduled and unleased. Run after run, each follow-up is pushed once."""
    run_sql(runtime.owner_url, ";".join(REVIEW_TRIGGER))
    ids = due_rows(owner, 12)

    first = send_due(runtime, owner, apns, webhook, FOLLOWUPS_BATCH_SIZE="3")
    assert first.returncode == 1, first.stdout + first.stderr
    [line] = error_lines(first)
    assert "run stopped claiming" in line
    claimed = int(re.search(r"claimed (\d+)", first.stdout).group(1))  # type: ignore[union-attr]
    # The batch that met the refusal, and at most the one pushed while its last group
    # was still being recorded.
    assert 3 <= claimed <= 6
    untouched = [fid for fid in ids if pushes(apns, [fid])[fid] == 0]
    assert len(untouched) == 12 - claimed
    for fid in untouched:
        stored = row(owner, fid)
        assert (stored.status, stored.claimed_by, stored.held_at) == ("scheduled", None, None)

    runs = [first]
    for _ in range(5):
        runs.append(send_due(runtime, owner, apns, webhook, FOLLOWUPS_BATCH_SIZE="3"))
        if runs[-1].returncode == 0:
            break
    twice = [fid for fid, n in pushes(apns, ids).items() if n != 1]
    # On failure, what each request of those got and what each run said: the answer
    # (or why there was none) tells a resend of an unprocessed request from a re-push.
    story = [
        (
            fid,
            [
                (p.status, p.reason, p.connection)
                for p in apns.requests
                if p.headers.get("apns-collapse-id") == fid
            ],
        )
        for fid in twice
    ] + [(run.returncode, run.stdout, run.stderr[-1500:]) for run in runs]
    assert not twice, story
    assert all(row(owner, fid).failure_reason == FailureReason.DATABASE_REJECTED for fid in ids)


# -- db check --role: the same causes, named before they bite --------------------------


def db_check(url: str, *args: str) -> Any:
    return runner.invoke(app, ["--database-url", url, "db", "check", *args])


def findings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "warning:"))]


def apply_fixes(url: str, output: str) -> None:
    for line in output.splitlines():
        if " Fix: " in line:
            run_sql(url, line.split(" Fix: ", 1)[1])


def test_db_check_role_names_row_security_without_a_policy_for_the_role(
    runtime: Runtime,
) -> None:
    """RLS on both app tables, the role's policy on follow_up_messages dropped: one
    error with the policy that fixes it; none for the connected superuser, none once a
    policy TO PUBLIC covers the INSERT."""
    run_sql(
        runtime.owner_url,
        "ALTER TABLE follow_up_requests ENABLE ROW LEVEL SECURITY;"
        "ALTER TABLE follow_up_messages ENABLE ROW LEVEL SECURITY;"
        f"DROP POLICY {ROLE} ON follow_up_messages;"
        "CREATE POLICY app_reads ON follow_up_messages FOR SELECT TO PUBLIC USING (true);",
    )
    result = db_check(runtime.owner_url, "--role", RUNTIME_ROLE)
    assert result.exit_code == 1, result.output
    assert findings(result.stdout) == [
        f"error: follow_up_messages: row level security is on and no policy lets "
        f"{RUNTIME_ROLE} INSERT, which this tool needs: every in-app message is refused and "
        "its follow-up is marked failed (database_rejected) or held, never retried on its "
        f'own. Fix: DROP POLICY IF EXISTS {ROLE} ON "public"."follow_up_messages"; CREATE '
        f'POLICY {ROLE} ON "public"."follow_up_messages" FOR ALL TO {ROLE} USING (true) '
        "WITH CHECK (true);"
    ]
    assert db_check(runtime.owner_url).exit_code == 0  # the superuser bypasses RLS

    run_sql(
        runtime.owner_url,
        "CREATE POLICY app_writes ON follow_up_messages FOR INSERT TO PUBLIC WITH CHECK (true)",
    )
    assert findings(db_check(runtime.owner_url, "--role", RUNTIME_ROLE).stdout) == []

    run_sql(runtime.owner_url, "DROP POLICY app_writes ON follow_up_messages")
    apply_fixes(runtime.owner_url, db_check(runtime.owner_url, "--role", RUNTIME_ROLE).stdout)
    assert db_check(runtime.owner_url, "--role", RUNTIME_ROLE).exit_code == 0


def test_db_check_role_names_invoker_triggers_and_the_tables_they_cannot_use(
    runtime: Runtime,
) -> None:
    """An app trigger that runs as the invoker is named with its function; with RLS on
    provider_review_requests and no policy for the role, so is that table. A SECURITY
    DEFINER function clears both."""
    run_sql(runtime.owner_url, ";".join(REVIEW_TRIGGER))
    invoker = (
        "warning: trigger app_messages_review on follow_up_messages runs "
        f"app_review_answered() as the invoker, {RUNTIME_ROLE} during send-due: a table it "
        f"uses without {RUNTIME_ROLE}'s grant or policy refuses the delivery, and the "
        "follow-up is marked failed (database_rejected) or held, never retried on its own; "
        f"grant {RUNTIME_ROLE} what the function uses, or make it SECURITY DEFINER."
    )
    result = db_check(runtime.owner_url, "--role", RUNTIME_ROLE)
    assert result.exit_code == 0, result.output  # warnings only
    assert invoker in findings(result.stdout)
    assert invoker not in db_check(runtime.owner_url).stdout  # a superuser has every grant

    run_sql(runtime.owner_url, "ALTER TABLE provider_review_requests ENABLE ROW LEVEL SECURITY")
    assert (
        f"warning: provider_review_requests: row level security is on and no policy applies "
        f"to {RUNTIME_ROLE}: an app trigger that runs as {RUNTIME_ROLE} and uses it is "
        "refused, and its follow-up is marked failed (database_rejected) or held, never "
        "retried on its own."
    ) in findings(db_check(runtime.owner_url, "--role", RUNTIME_ROLE).stdout)

    run_sql(runtime.owner_url, "ALTER FUNCTION app_review_answered() SECURITY DEFINER")
    after = findings(db_check(runtime.owner_url, "--role", RUNTIME_ROLE).stdout)
    assert after == [
        "warning: trigger app_messages_review on follow_up_messages: a follow-up it refuses "
        "is marked failed (database_rejected) or held, never retried on its own."
    ]


def test_db_check_role_names_the_privileges_it_lacks_with_the_grants(runtime: Runtime) -> None:
    """INSERT on follow_up_attempts revoked (as an upgrade might), the attempts' sequence
    and one updatable column too: one error each, and their fixes restore them."""
    run_sql(
        runtime.owner_url,
        f"REVOKE INSERT ON follow_up_attempts FROM {ROLE};"
        f"REVOKE USAGE ON SEQUENCE follow_up_attempts_id_seq FROM {ROLE};"
        f"REVOKE UPDATE (held_at) ON follow_up_requests FROM {ROLE};",
    )
    result = db_check(runtime.owner_url, "--role", RUNTIME_ROLE)
    assert result.exit_code == 1, result.output
    assert findings(result.stdout) == [
        f"error: {RUNTIME_ROLE} lacks UPDATE (held_at) on follow_up_requests, which the "
        "runtime commands need. Fix: GRANT UPDATE (held_at) ON TABLE "
        f'"public"."follow_up_requests" TO {ROLE};',
        f"error: {RUNTIME_ROLE} lacks INSERT on follow_up_attempts, which the runtime "
        f'commands need. Fix: GRANT INSERT ON TABLE "public"."follow_up_attempts" TO {ROLE};',
        f"error: {RUNTIME_ROLE} lacks USAGE on sequence follow_up_attempts_id_seq, which an "
        "INSERT into follow_up_attempts needs. Fix: GRANT USAGE ON SEQUENCE "
        f'"public"."follow_up_attempts_id_seq" TO {ROLE};',
    ]
    assert db_check(runtime.owner_url).exit_code == 0  # the connected owner lacks nothing

    apply_fixes(runtime.owner_url, result.stdout)
    fixed = db_check(runtime.owner_url, "--role", RUNTIME_ROLE)
    assert fixed.exit_code == 0, fixed.output
    assert findings(fixed.stdout) == []


def test_db_check_role_that_does_not_exist_or_on_sqlite(pg_db_url: str, tmp_path: Any) -> None:
    """An unknown role is one error; --role on SQLite is a usage error (exit 2)."""
    missing = db_check(pg_db_url, "--role", "followups_no_such_role")
    assert missing.exit_code == 1
    assert findings(missing.stdout) == [
        "error: role followups_no_such_role does not exist, so its grants and policies were "
        "not checked. Fix: CREATE ROLE \"followups_no_such_role\" LOGIN PASSWORD '...';"
    ]
    (tmp_path / "x.db").touch()
    sqlite = db_check(f"sqlite:///{tmp_path / 'x.db'}", "--role", "r")
    assert sqlite.exit_code == 2
    assert "needs a PostgreSQL database" in sqlite.stderr
