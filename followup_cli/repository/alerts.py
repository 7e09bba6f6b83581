"""The statements behind the alerts: each alert's state, read under a row lock and
written back in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update

from followup_cli.repository.base import RepositoryBase, _aware, _insert_ignore
from followup_cli.tables import followups_alert_state

# The state of an alert whose condition does not hold. Any other value means it is firing
# ("firing"; "low" in rows written before alerts had a lifecycle).
ALERT_OK = "ok"
ALERT_FIRING = "firing"
# How long a run waits for an alert's row lock on PostgreSQL, whatever lock or statement
# timeout the database's owner set (managed databases often set one of a few seconds):
# the run holding it may be posting, which the webhook's timeout (5 s) bounds, and a few
# runs may queue. Given up sooner, a run would post without the state, and post again
# what the holder is posting.
ALERT_LOCK_WAIT = "20s"


@dataclass(frozen=True)
class AlertState:
    """One alert's row: firing or not, since when (the last change), and when it was
    last posted."""

    fingerprint: str
    firing: bool
    changed_at: datetime | None
    last_alert_at: datetime | None


class AlertStatements(RepositoryBase):
    """Each alert's state, shared by every run and host."""

    def wait_for_alert_locks(self) -> None:
        """On PostgreSQL, bound this transaction's waits by ALERT_LOCK_WAIT alone, whatever
        the database sets (set_config(..., true) is SET LOCAL: it ends with the
        transaction, so it holds behind PgBouncer's transaction pooling too)."""
        if self.dialect == "postgresql":
            self.conn.execute(
                text(
                    "SELECT set_config('lock_timeout', :wait, true),"
                    " set_config('statement_timeout', :wait, true)"
                ),
                {"wait": ALERT_LOCK_WAIT},
            )

    def lock_alert(self, fingerprint: str, now: datetime) -> AlertState:
        """The alert's state, its row created if missing (not firing) and locked until the
        transaction ends (SELECT ... FOR UPDATE; SQLite's BEGIN IMMEDIATE already holds
        the database), so that overlapping runs decide one after the other. Call
        wait_for_alert_locks first in the transaction."""
        state = followups_alert_state.c
        self.conn.execute(
            _insert_ignore(self.dialect, followups_alert_state).values(
                name=fingerprint, state=ALERT_OK, last_alert_at=None, changed_at=now
            )
        )
        row = self.conn.execute(
            select(state.state, state.changed_at, state.last_alert_at)
            .where(state.name == fingerprint)
            .with_for_update()
        ).one()
        return AlertState(
            fingerprint,
            firing=row.state != ALERT_OK,
            changed_at=_aware(row.changed_at),
            last_alert_at=_aware(row.last_alert_at),
        )

    def save_alert(self, state: AlertState) -> None:
        """Write back a state read with lock_alert in this transaction."""
        self.conn.execute(
            update(followups_alert_state)
            .where(followups_alert_state.c.name == state.fingerprint)
            .values(
                state=ALERT_FIRING if state.firing else ALERT_OK,
                changed_at=state.changed_at,
                last_alert_at=state.last_alert_at,
            )
        )

    def firing_alerts(self) -> list[AlertState]:
        """The alerts firing now, oldest first (for stats)."""
        state = followups_alert_state.c
        rows = self.conn.execute(
            select(state.name, state.changed_at, state.last_alert_at)
            .where(state.state != ALERT_OK)
            .order_by(state.changed_at, state.name)
        ).all()
        return [
            AlertState(r.name, True, _aware(r.changed_at), _aware(r.last_alert_at)) for r in rows
        ]
