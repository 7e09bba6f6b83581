"""The statements of schedule and cancel: what the app does, for local and QA databases."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select, update

from followup_cli.repository.base import RepositoryBase
from followup_cli.tables import follow_up_requests, provider_review_requests
from followup_cli.vocabulary import Status

requests = follow_up_requests.c


class AppStatements(RepositoryBase):
    """schedule and cancel, as the app does."""

    def insert_follow_up(self, values: dict[str, Any]) -> None:
        self.conn.execute(insert(follow_up_requests).values(**values))

    def set_review_flag(self, conversation_id: str, scheduled: bool) -> None:
        """provider_review_requests.schedule_followup for a conversation; creates the
        review row when the conversation has none (local and QA databases)."""
        reviews = provider_review_requests.c
        changed = self.conn.execute(
            update(provider_review_requests)
            .where(reviews.conversation_id == conversation_id)
            .values(schedule_followup=scheduled)
        ).rowcount
        if not changed and scheduled:
            self.conn.execute(
                insert(provider_review_requests).values(
                    id=str(uuid.uuid4()), conversation_id=conversation_id, schedule_followup=True
                )
            )

    def cancel_follow_up(self, follow_up_id: str) -> tuple[str, str | None] | None:
        """scheduled -> cancelled. Returns (status after, conversation_id), or None if unknown."""
        row = self.conn.execute(
            update(follow_up_requests)
            .where(requests.id == follow_up_id, requests.status == Status.SCHEDULED)
            .values(status=Status.CANCELLED, claimed_by=None, claim_expires_at=None)
            .returning(requests.status, requests.conversation_id)
        ).first()
        if row is not None:
            return row.status, row.conversation_id
        current = self.conn.execute(
            select(requests.status, requests.conversation_id).where(requests.id == follow_up_id)
        ).first()
        return None if current is None else (current.status, current.conversation_id)
