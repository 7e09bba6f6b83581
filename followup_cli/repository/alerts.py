"""The statement behind the alerts: one compare-and-set on an alert's state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

from followup_cli.repository.base import RepositoryBase, _insert_ignore
from followup_cli.tables import followups_alert_state


class AlertStatements(RepositoryBase):
    """Each alert's state, shared by concurrent runs."""

    def transition_alert(
        self, name: str, low: bool, now: datetime, cooldown_until: datetime
    ) -> bool:
        """Compare-and-set on an alert's state; True means this caller should alert.

        low=True alerts when the state was ok, or was low and its last alert is older than
        the cooldown; low=False alerts (recovery) only when the state was low. Concurrent
        runs race on one UPDATE, so only one of them alerts.
        """
        alert_state = followups_alert_state.c
        if (
            self.conn.execute(select(alert_state.name).where(alert_state.name == name)).first()
            is None
        ):
            self.conn.execute(
                _insert_ignore(self.dialect, followups_alert_state).values(
                    name=name, state="ok", last_alert_at=None, changed_at=now
                )
            )
        if low:
            stmt = (
                update(followups_alert_state)
                .where(
                    alert_state.name == name,
                    or_(
                        alert_state.state != "low",
                        alert_state.last_alert_at.is_(None),
                        alert_state.last_alert_at <= cooldown_until,
                    ),
                )
                .values(state="low", last_alert_at=now, changed_at=now)
            )
        else:
            stmt = (
                update(followups_alert_state)
                .where(alert_state.name == name, alert_state.state == "low")
                .values(state="ok", changed_at=now)
            )
        return self.conn.execute(stmt).rowcount == 1
