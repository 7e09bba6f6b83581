"""The rows and facts the Repository takes and returns: plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DueFollowUp:
    id: str
    conversation_id: str | None
    user_id: str | None
    scheduled_for: datetime
    urgency: str | None
    display_text: str | None
    device_token: str | None
    provider_name: str | None
    in_app_only: bool
    # Set while it waits to be tried again after transient failures (see `defer`).
    retrying_since: datetime | None = None
    retry_count: int = 0


@dataclass(frozen=True)
class Message:
    follow_up_id: str
    conversation_id: str | None
    user_id: str | None
    content: str
    timestamp: datetime


@dataclass(frozen=True)
class Failure:
    follow_up_id: str
    reason: str


@dataclass(frozen=True)
class FailedFollowUp:
    id: str
    reason: str | None
    failed_at: datetime | None  # for a held row: when it was held
    # The app stored a different token since the failure.
    token_changed: bool
    # Still `scheduled`, but held: the database refused even to mark it failed.
    held: bool = False
    detail: str | None = None


@dataclass(frozen=True)
class ColumnFacts:
    name: str
    type: str  # as the database spells it, e.g. VARCHAR(20)
    not_null: bool
    has_default: bool  # a default, an identity or a generated column
    enum_labels: tuple[str, ...] | None  # the allowed labels of an enum type


@dataclass(frozen=True)
class CheckFacts:
    name: str | None
    expression: str


@dataclass(frozen=True)
class ForeignKeyFacts:
    name: str | None
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]


@dataclass(frozen=True)
class AttemptRecord:
    follow_up_id: str
    attempted_at: datetime
    attempt: int
    outcome: str
    reason: str | None = None
    status_code: int | None = None
    apns_id: str | None = None
    is_test: bool = False


@dataclass(frozen=True)
class RunRecord:
    id: str
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime
    push_backend: str
    claimed: int
    sent: int
    failed: int
    skipped: int
    outcome: str


@dataclass(frozen=True)
class StoredCredential:
    token: str | None
    expires_at: datetime | None
    renewal_started_at: datetime | None


@dataclass(frozen=True)
class LastRun:
    id: str
    host: str | None
    started_at: datetime
    finished_at: datetime | None
    claimed: int
    sent: int
    failed: int
    outcome: str | None


@dataclass(frozen=True)
class TableAccess:
    """A table's row level security and who among some roles can reach it (PostgreSQL)."""

    name: str
    schema: str
    row_security: bool
    # Of the roles asked about (those that exist): who can SELECT, who holds any privilege.
    readers: tuple[str, ...]
    holders: tuple[str, ...]
    public_privileges: bool


@dataclass(frozen=True)
class RoleFacts:
    """A role as the runtime would connect (PostgreSQL)."""

    name: str
    superuser: bool
    bypass_rls: bool


@dataclass(frozen=True)
class EffectiveAccess:
    """What one role (or PUBLIC) can do to a table's rows with one command (PostgreSQL),
    judged from its privileges and the table's row level security."""

    table: str
    schema: str
    role: str  # a role's name, or PUBLIC
    command: str  # SELECT, INSERT, UPDATE or DELETE
    row_security: bool
    # The role holds the privilege (on the table or, for SELECT, INSERT and UPDATE, on
    # any of its columns), directly, through PUBLIC or through a role it belongs to.
    privileged: bool
    bypass_rls: bool
    # Permissive policies that apply to the role for the command with the expression
    # `true` (every row, any values), and restrictive ones that narrow it.
    open_policies: tuple[str, ...]
    narrowing_policies: tuple[str, ...]

    @property
    def every_row(self) -> bool:
        """Can reach every row (and, for INSERT and UPDATE, write any values)."""
        if not self.privileged:
            return False
        if not self.row_security or self.bypass_rls:
            return True
        return bool(self.open_policies) and not self.narrowing_policies


@dataclass(frozen=True)
class PastRowSecurity:
    """A role with BYPASSRLS that can SELECT some tables (pg_read_all_data gives SELECT
    on every table), so reads every row of them."""

    role: str
    bypass_rls: bool
    read_all_data: bool
    can_login: bool
    tables: tuple[str, ...]


@dataclass(frozen=True)
class TableOwner:
    name: str
    schema: str
    owner: str
    # The connected user is the owner or a member of the owning role (may ALTER it).
    current_user_may_alter: bool


@dataclass(frozen=True)
class RowSecurityFacts:
    """A table's row level security as one role meets it (PostgreSQL)."""

    name: str
    schema: str
    enabled: bool
    forced: bool
    # The role is the table's owner, or has its privileges (owners bypass unless forced).
    owner: bool
    # The commands ('*', 'r' SELECT, 'a' INSERT, 'w' UPDATE, 'd' DELETE) of the permissive
    # policies that apply to the role: TO PUBLIC, to it, or to a role whose privileges it has.
    policy_commands: tuple[str, ...]


@dataclass(frozen=True)
class TriggerFunction:
    table: str
    trigger: str
    function: str  # with its argument types, e.g. public.app_review_answered()
    security_definer: bool


@dataclass(frozen=True)
class StoredFollowUp:
    """`show`: what support may see of one follow-up; never its text, the child's name or
    age, and the device token only for the service to mask it."""

    id: str
    conversation_id: str | None
    status: str
    scheduled_for: datetime | None
    device_token: str | None
    in_app_only: bool
    sent_at: datetime | None
    failed_at: datetime | None
    failure_reason: str | None
    failure_detail: str | None
    held_at: datetime | None
    retry_at: datetime | None
    retrying_since: datetime | None
    retry_count: int | None
    claimed_by: str | None
    claim_expires_at: datetime | None


@dataclass(frozen=True)
class StoredAttempt:
    """`show`: one row of follow_up_attempts, with the run that made it."""

    run_id: str | None
    attempted_at: datetime
    attempt: int
    outcome: str
    reason: str | None
    status_code: int | None
    apns_id: str | None  # the provider's id: APNs' apns-id or FCM's message name
    is_test: bool


@dataclass(frozen=True)
class StoredRun:
    """`show`: the part of a follow_up_runs row that says where and how a run went."""

    id: str
    host: str | None
    started_at: datetime
    outcome: str | None
