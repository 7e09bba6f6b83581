"""The statements of push service credentials (FCM access tokens), shared through the
database by every process."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

from followup_cli.repository.base import RepositoryBase, _insert_ignore
from followup_cli.repository.rows import StoredCredential
from followup_cli.tables import followups_push_credentials


class CredentialStatements(RepositoryBase):
    """A stored access token and who renews it."""

    def push_credential(self, name: str) -> StoredCredential | None:
        credentials = followups_push_credentials.c
        found = self.conn.execute(
            select(credentials.token, credentials.expires_at, credentials.renewal_started_at).where(
                credentials.name == name
            )
        ).first()
        if found is None:
            return None
        return StoredCredential(found.token, found.expires_at, found.renewal_started_at)

    def claim_credential_renewal(self, name: str, now: datetime, stale_before: datetime) -> bool:
        """Compare-and-set: True when this caller may fetch a new token, because no one
        else has started a renewal since `stale_before` (a renewer that died is taken
        over). Concurrent callers race on one statement, so one of them wins."""
        credentials = followups_push_credentials.c
        claimed = self.conn.execute(
            update(followups_push_credentials)
            .where(
                credentials.name == name,
                or_(
                    credentials.renewal_started_at.is_(None),
                    credentials.renewal_started_at < stale_before,
                ),
            )
            .values(renewal_started_at=now)
        ).rowcount
        if claimed:
            return True
        # RETURNING, not rowcount: psycopg does not report an INSERT ... ON CONFLICT's count.
        inserted = self.conn.execute(
            _insert_ignore(self.dialect, followups_push_credentials)
            .values(name=name, token=None, expires_at=None, updated_at=now, renewal_started_at=now)
            .returning(credentials.name)
        ).first()
        return inserted is not None

    def store_credential(self, name: str, token: str, expires_at: datetime, now: datetime) -> None:
        """The renewed token; the renewal is over."""
        credentials = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials)
            .where(credentials.name == name)
            .values(token=token, expires_at=expires_at, updated_at=now, renewal_started_at=None)
        )

    def abandon_credential_renewal(self, name: str) -> None:
        """The fetch failed: let the next caller try at once instead of waiting it out."""
        credentials = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials)
            .where(credentials.name == name)
            .values(renewal_started_at=None)
        )

    def expire_credential(self, name: str, token: str, now: datetime) -> None:
        """The service refused `token`: mark it expired, unless it was replaced already."""
        credentials = followups_push_credentials.c
        self.conn.execute(
            update(followups_push_credentials)
            .where(credentials.name == name, credentials.token == token)
            .values(expires_at=now)
        )
