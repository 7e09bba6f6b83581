"""Helpers for tests: rows written the way the iOS app writes them, and readers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from followup_cli.alerts import LogAlerter, WebhookAlerter
from followup_cli.clock import utcnow
from followup_cli.db import Database
from followup_cli.tables import follow_up_attempts, follow_up_messages, follow_up_requests

if TYPE_CHECKING:
    from followup_cli.report import RunReport
    from followup_cli.settings import Settings
    from tests.fake_apns import FakeAPNs
    from tests.fake_fcm import FakeFCM
    from tests.fake_webhook import FakeWebhook

TOKEN_A = "a" * 64
TOKEN_B = "b" * 64


def fcm_token(n: int) -> str:
    """An FCM registration token's shape: instance id, colon, APA91b and URL-safe base64."""
    return f"c{n:021d}:APA91b{n:08d}" + "Xy_9-Ab" * 20


def fcm_env(fcm: FakeFCM) -> dict[str, str]:
    """The environment a subprocess needs to push to the fake FCM."""
    return {
        "FOLLOWUPS_PUSH": "fcm",
        "FOLLOWUPS_FCM_CREDENTIALS_FILE": str(fcm.credentials_file),
        "FOLLOWUPS_FCM_URL": fcm.url,
        "FOLLOWUPS_FCM_CA_FILE": str(fcm.ca_file),
        "FOLLOWUPS_RETRY_BASE_SECONDS": "0",
    }


def apns_env(apns: FakeAPNs) -> dict[str, str]:
    """The environment a subprocess needs to push to the fake APNs."""
    return {
        "FOLLOWUPS_PUSH": "apns",
        "FOLLOWUPS_APNS_KEY_FILE": str(apns.key_file),
        "FOLLOWUPS_APNS_KEY_ID": apns.key_id,
        "FOLLOWUPS_APNS_TEAM_ID": apns.team_id,
        "FOLLOWUPS_APNS_TOPIC": apns.topic,
        "FOLLOWUPS_APNS_URL": apns.url,
        "FOLLOWUPS_APNS_CA_FILE": str(apns.ca_file),
        "FOLLOWUPS_RETRY_BASE_SECONDS": "0",
    }


def apns_token(n: int) -> str:
    """A distinct, well-formed APNs device token for each n."""
    return f"{n:064x}"


def attempts(db: Database, follow_up_id: str) -> list[tuple[int, str, str | None]]:
    """(attempt number, outcome, reason) of every recorded attempt, in order."""
    a = follow_up_attempts.c
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(a.attempt, a.outcome, a.reason)
            .where(a.follow_up_id == follow_up_id)
            .order_by(a.attempt)
        ).all()
    return [(r.attempt, r.outcome, r.reason) for r in rows]


def deliver(db: Database, settings: Settings, webhook: FakeWebhook | None = None) -> RunReport:
    """One send-due run in this process, as the CLI runs it, with alerts to `webhook`."""
    from followup_cli.delivery import send_due
    from followup_cli.push.factory import make_pusher

    pusher = make_pusher(settings, db)
    alerter = WebhookAlerter(webhook.url) if webhook else LogAlerter()
    try:
        return send_due(db, pusher, settings, alerter)
    finally:
        pusher.close()


def start_send_due(url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`followups send-due` as its own process (a cron run), with only `env`'s settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUPS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "followup_cli", "--database-url", url, "send-due"],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- rows as the app writes them --------------------------------------------------------


def app_row(
    db: Database,
    *,
    scheduled_for: datetime | None = None,
    status: str = "scheduled",
    display_text: str | None = "How is Maya's fever today?",
    device_token: str | None = TOKEN_A,
    conversation_id: str | None = None,
    user_id: str | None = "parent-1",
    urgency: str | None = "routine",
    child_name: str | None = "Maya",
    **extra: Any,
) -> str:
    """Insert a follow-up with only the app's columns (plus `extra`); return its id."""
    follow_up_id = str(uuid.uuid4())
    values = {
        "id": follow_up_id,
        "conversation_id": conversation_id or str(uuid.uuid4()),
        "user_id": user_id,
        "scheduled_for": scheduled_for or utcnow() - timedelta(minutes=1),
        "urgency": urgency,
        "display_text": display_text,
        "original_message": display_text,
        "status": status,
        "child_name": child_name,
        "child_age": "4",
        "device_token": device_token,
        "follow_up_days": 0,
        "follow_up_hours": 1,
        "follow_up_minutes": 0,
        **extra,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(follow_up_requests).values(**values))
    return follow_up_id


def row(db: Database, follow_up_id: str) -> Any:
    with db.engine.connect() as conn:
        return conn.execute(
            select(follow_up_requests).where(follow_up_requests.c.id == follow_up_id)
        ).one()


def messages(db: Database, follow_up_id: str | None = None) -> list[Any]:
    query = select(follow_up_messages).order_by(follow_up_messages.c.timestamp)
    if follow_up_id is not None:
        query = query.where(follow_up_messages.c.follow_up_id == follow_up_id)
    with db.engine.connect() as conn:
        return list(conn.execute(query))
