"""Admin alerts with a lifecycle, over real runs: a condition fires once, is reminded
after the repeat interval, and is resolved once; conditions that start together go in
one post; new failures are posted each run; overlapping runs post once.

Posts go to a fake webhook; pushes go through the real clients to the fake APNs and
FCM. The 5-run story runs `followups send-due` as cron does, one process per run.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from followup_cli.alerting import Finding, raise_alerts
from followup_cli.alerts import WebhookAlerter
from followup_cli.db import Database
from followup_cli.settings import Settings
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.webhook import FakeWebhook
from tests.helpers import (
    apns_env,
    apns_token,
    app_row,
    deliver,
    due_again,
    execute,
    fcm_token,
    finish_run,
    followups,
    row,
    start_apns_run,
)

T0 = datetime.fromisoformat("2026-12-07T03:00:00+00:00")


def cron_run(db_url: str, apns: FakeAPNs, webhook: FakeWebhook, *, wrong_key: bool) -> int:
    """One `followups send-due` process, as cron starts it; its exit code."""
    env = {**apns_env(apns), "FOLLOWUPS_ALERT_WEBHOOK_URL": webhook.url}
    if wrong_key:
        env["FOLLOWUPS_APNS_KEY_FILE"] = apns.wrong_key_file
    result = followups(db_url, "send-due", env=env)
    return result.returncode


def test_a_configuration_stop_over_five_runs_posts_once_then_resolves_once(
    db: Database, db_url: str, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A wrong APNs key for five cron runs: one post. Fixed: one "resolved", and the
    follow-ups go out. After that, runs post nothing."""
    ids = [app_row(db, device_token=apns_token(i)) for i in range(3)]
    codes = [cron_run(db_url, apns, webhook, wrong_key=True) for _ in range(5)]
    assert codes == [1] * 5
    [fired] = webhook.texts()
    assert fired.startswith("followups [FIRING apns-configuration] send-due stopped: APNs ")
    assert "rejected our configuration (InvalidProviderToken)" in fired
    assert "Maya" not in fired
    stats = followups(db_url, "stats")
    assert "alerts firing" in stats.stdout and "apns-configuration since" in stats.stdout

    assert cron_run(db_url, apns, webhook, wrong_key=False) == 0
    assert [row(db, fid).status for fid in ids] == ["sent"] * 3
    texts = webhook.texts()
    assert len(texts) == 2
    assert texts[1].startswith("followups [RESOLVED apns-configuration after ")
    assert texts[1].endswith("] APNs accepts our configuration.")

    app_row(db, device_token=apns_token(7))
    assert cron_run(db_url, apns, webhook, wrong_key=False) == 0  # a push, all well
    assert cron_run(db_url, apns, webhook, wrong_key=False) == 0  # the idle minute
    assert len(webhook.texts()) == 2
    assert "alerts firing" not in followups(db_url, "stats").stdout


def test_a_lasting_condition_is_reminded_after_the_repeat_interval(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Posted at once; nothing within the interval; one reminder saying for how long;
    resolved with how long it lasted."""
    app_row(db, scheduled_for=T0 - timedelta(hours=1))
    wrong = replace(apns_settings, apns_key_file=Path(apns.wrong_key_file))
    for minutes in (0, 1, 60, 239, 240, 241, 300):
        with freeze_time(T0 + timedelta(minutes=minutes)):
            assert deliver(db, wrong, webhook).exit_code == 1
    with freeze_time(T0 + timedelta(minutes=302)):
        assert deliver(db, apns_settings, webhook).exit_code == 0
    texts = webhook.texts()
    assert [t.split("]")[0] for t in texts] == [
        "followups [FIRING apns-configuration",
        "followups [STILL FIRING apns-configuration, for 4h 0m",
        "followups [RESOLVED apns-configuration after 5h 2m",
    ]
    assert "InvalidProviderToken" in texts[1]


def test_a_shorter_repeat_interval_is_taken_from_the_environment(
    db: Database, db_url: str, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """FOLLOWUPS_ALERT_REPEAT_INTERVAL sets the reminder's interval."""
    app_row(db)
    env = {
        **apns_env(apns),
        "FOLLOWUPS_APNS_KEY_FILE": apns.wrong_key_file,
        "FOLLOWUPS_ALERT_WEBHOOK_URL": webhook.url,
        "FOLLOWUPS_ALERT_REPEAT_INTERVAL": "1s",
    }
    assert followups(db_url, "send-due", env=env).returncode == 1
    threading.Event().wait(1.1)
    assert followups(db_url, "send-due", env=env).returncode == 1
    texts = webhook.texts()
    assert [t.split(",")[0].split("]")[0] for t in texts] == [
        "followups [FIRING apns-configuration",
        "followups [STILL FIRING apns-configuration",
    ]
    bad = followups(db_url, "send-due", env={**env, "FOLLOWUPS_ALERT_REPEAT_INTERVAL": "4"})
    assert bad.returncode == 2
    assert bad.stderr.startswith("Error: FOLLOWUPS_ALERT_REPEAT_INTERVAL")


def test_conditions_that_start_together_go_in_one_post(
    db: Database,
    both_settings: Settings,
    apns: FakeAPNs,
    fcm: FakeFCM,
    webhook: FakeWebhook,
) -> None:
    """APNs refuses our key while FCM is down: one post naming both. The next run, the
    same: nothing. FCM back: one post, FCM's outage resolved; APNs' alert still fires."""
    app_row(db, device_token=apns_token(1))
    app_row(db, device_token=fcm_token(1))
    settings = replace(
        both_settings,
        apns_key_file=Path(apns.wrong_key_file),
        outage_threshold=2,
        retry_base_seconds=0.0,
    )
    fcm.respond("UNAVAILABLE")
    for _ in range(2):
        due_again(db)  # the retry pause has passed
        report = deliver(db, settings, webhook)
        assert {s.service: s.kind for s in report.stops} == {
            "apns": "config_error",
            "fcm": "outage",
        }
    [post] = webhook.texts()
    lines = post.splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "followups [FIRING apns-configuration",
        "followups [FIRING fcm-outage",
    ]
    fcm.reset()
    due_again(db)
    deliver(db, settings, webhook)
    texts = webhook.texts()
    assert len(texts) == 2
    assert texts[1].startswith("followups [RESOLVED fcm-outage after ")
    assert texts[1].endswith("] FCM answers again.")


def test_new_failures_are_posted_each_run_while_a_condition_lasts(
    db: Database,
    both_settings: Settings,
    apns: FakeAPNs,
    fcm: FakeFCM,
    webhook: FakeWebhook,
) -> None:
    """Follow-ups that failed for good are not a lasting condition: each run posts the
    ids it marked failed, and only those, while APNs' alert stays quiet."""
    settings = replace(both_settings, apns_key_file=Path(apns.wrong_key_file))
    app_row(db, device_token=apns_token(1))
    first = app_row(db, device_token=fcm_token(1))
    fcm.respond("UNREGISTERED", token=fcm_token(1))
    deliver(db, settings, webhook)
    [post] = webhook.texts()
    assert post.splitlines()[0].startswith("followups [FIRING apns-configuration] ")
    assert post.splitlines()[1] == (
        f"followups: 1 follow-up(s) could not be delivered and are marked failed: {first} "
        "(UNREGISTERED). See docs/reliability.md; requeue with `followups retry-failed`."
    )
    second = app_row(db, device_token=fcm_token(2))
    fcm.respond("UNREGISTERED", token=fcm_token(2))
    deliver(db, settings, webhook)
    texts = webhook.texts()
    assert len(texts) == 2
    assert texts[1].startswith("followups: 1 follow-up(s) could not be delivered")
    assert second in texts[1] and first not in texts[1]
    assert "apns-configuration" not in texts[1]


def test_an_outage_fires_once_and_resolves_when_apns_answers(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """APNs down for three runs: one post. APNs back: one "resolved"."""
    settings = replace(apns_settings, outage_threshold=2, retry_base_seconds=0.0)
    app_row(db)
    apns.respond(503, "ServiceUnavailable")
    for _ in range(3):
        due_again(db)  # the retry pause has passed
        assert deliver(db, settings, webhook).stop == "outage"
    apns.clear_rules()
    due_again(db)
    assert deliver(db, settings, webhook).exit_code == 0
    texts = webhook.texts()
    assert [t.split("]")[0].split(" after")[0] for t in texts] == [
        "followups [FIRING apns-outage",
        "followups [RESOLVED apns-outage",
    ]
    assert "APNs keeps failing (ServiceUnavailable)" in texts[0]
    assert texts[1].endswith("] APNs answers again.")


def test_a_post_the_webhook_did_not_take_is_posted_by_the_next_run(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The chat service answers 500: the alert's state is not changed, so the next run
    posts it; after that, nothing."""
    app_row(db)
    wrong = replace(apns_settings, apns_key_file=Path(apns.wrong_key_file))
    webhook.status = 500
    deliver(db, wrong, webhook)
    assert len(webhook.posts) == 1  # tried, refused
    webhook.status = 200
    deliver(db, wrong, webhook)
    deliver(db, wrong, webhook)
    texts = webhook.texts()
    assert len(texts) == 2
    assert texts[0] == texts[1]
    assert texts[1].startswith("followups [FIRING apns-configuration] ")


def test_without_its_state_a_run_still_posts(
    db: Database, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """The state table gone (a botched restore): every run posts what it found, rather
    than nothing."""
    app_row(db)
    execute(db, "DROP TABLE followups_alert_state")
    wrong = replace(apns_settings, apns_key_file=Path(apns.wrong_key_file))
    for _ in range(2):
        assert deliver(db, wrong, webhook).exit_code == 1
    texts = webhook.texts()
    assert len(texts) == 2
    assert all(t.startswith("followups [FIRING apns-configuration] ") for t in texts)


@pytest.mark.postgres
def test_database_refusals_fire_and_resolve(
    pg_db_url: str, apns_settings: Settings, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """A CHECK of the app's refuses one follow-up's message: the refusal fires with its
    id; a later run that records its deliveries resolves it."""
    with Database(pg_db_url) as db:
        settings = replace(apns_settings, database_url=pg_db_url)
        execute(
            db,
            "ALTER TABLE follow_up_messages ADD CONSTRAINT app_no_flagged "
            "CHECK (strpos(message_content, 'flagged') = 0)",
        )
        refused = app_row(db, display_text="flagged text", device_token=apns_token(1))
        app_row(db, device_token=apns_token(2))
        deliver(db, settings, webhook)
        [fired] = webhook.texts()
        assert fired.startswith("followups [FIRING database-refusal] ")
        assert refused in fired and "app_no_flagged" in fired and "flagged text" not in fired
        app_row(db, device_token=apns_token(3))
        deliver(db, settings, webhook)
        texts = webhook.texts()
        assert len(texts) == 2
        assert texts[1].startswith("followups [RESOLVED database-refusal after ")
        assert texts[1].endswith("] the database records deliveries.")


@pytest.mark.postgres
def test_overlapping_runs_on_postgresql_post_once(
    pg_db_url: str, apns: FakeAPNs, webhook: FakeWebhook
) -> None:
    """Two cron hosts' runs at the same minute, both stopped by the wrong key, with a
    slow chat service: one post."""
    with Database(pg_db_url) as db:
        for i in range(40):
            app_row(db, device_token=apns_token(i), conversation_id=str(uuid.uuid4()))
    webhook.delay = 1.0
    env = {
        "FOLLOWUPS_APNS_KEY_FILE": apns.wrong_key_file,
        "FOLLOWUPS_ALERT_WEBHOOK_URL": webhook.url,
        "FOLLOWUPS_BATCH_SIZE": "1",
    }
    runs = [start_apns_run(pg_db_url, apns, **env) for _ in range(2)]
    results = [finish_run(run) for run in runs]
    assert [code for code, _out, _err in results] == [1, 1], results
    assert len(apns.requests) == 2  # each run met the wrong key itself
    assert len(webhook.texts()) == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    "database_setting", [None, "lock_timeout = '100ms'", "statement_timeout = '200ms'"]
)
def test_racing_alert_rounds_post_once(
    pg_db_url: str, webhook: FakeWebhook, database_setting: str | None
) -> None:
    """Eight runs end together with the same finding: the state's row lock lets one post
    (while the others wait for it), and the others find the alert already firing. Also
    where the database's owner set a lock or statement timeout shorter than a post takes
    (managed databases often have one): the runs waiting for the lock still wait for it,
    rather than giving up and posting without the state."""
    with Database(pg_db_url) as db:  # fired and resolved before: the row exists
        execute(
            db,
            "INSERT INTO followups_alert_state (name, state) VALUES ('apns-configuration', 'ok')",
        )
        if database_setting is not None:  # for the connections made from now on
            name = db.engine.url.database
            execute(db, f'ALTER DATABASE "{name}" SET {database_setting}')
    webhook.delay = 0.5
    finding = Finding("apns-configuration", True, "send-due stopped: a test condition.")
    start = threading.Barrier(8)
    posts: list[str | None] = []

    def one_run() -> None:
        with Database(pg_db_url) as db:
            start.wait()
            posted = raise_alerts(
                db, WebhookAlerter(webhook.url), [finding], [], timedelta(hours=4)
            )
            posts.append(posted)

    threads = [threading.Thread(target=one_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(posts) == 8
    assert len([p for p in posts if p is not None]) == 1
    assert len(webhook.texts()) == 1
