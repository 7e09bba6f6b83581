"""The only package that speaks SQL. One method per statement; never commits.

A Repository wraps one connection inside one transaction (see Database.transaction);
the caller decides where a unit of work begins and ends. Its statements live in one
module per domain, each a class over RepositoryBase (base.py); rows.py holds the rows
and facts they take and return:

    delivery.py     send-due: claim, lease, finish, attempts, runs; test-send's lease
    stats.py        stats and monitoring
    alerts.py       each alert's state
    credentials.py  push service credentials (FCM access tokens)
    cleanup.py      purge and archive
    requeue.py      retry-failed
    catalog.py      db check: what the app's schema allows
    access.py       security checks over PostgreSQL's catalogs
    app.py          schedule and cancel, as the app does
    story.py        show: one follow-up's row, attempts, message time and runs
"""

from __future__ import annotations

from followup_cli.repository.access import AccessStatements
from followup_cli.repository.alerts import AlertState, AlertStatements
from followup_cli.repository.app import AppStatements
from followup_cli.repository.base import RepositoryBase
from followup_cli.repository.catalog import CatalogStatements
from followup_cli.repository.cleanup import CleanupStatements
from followup_cli.repository.credentials import CredentialStatements
from followup_cli.repository.delivery import CLAIM_LOCK_KEY, DeliveryStatements
from followup_cli.repository.requeue import RequeueStatements
from followup_cli.repository.rows import (
    AttemptRecord,
    CheckFacts,
    ColumnFacts,
    DueFollowUp,
    EffectiveAccess,
    FailedFollowUp,
    Failure,
    ForeignKeyFacts,
    LastRun,
    Message,
    PastRowSecurity,
    RoleFacts,
    RowSecurityFacts,
    RunRecord,
    StoredAttempt,
    StoredCredential,
    StoredFollowUp,
    StoredRun,
    TableAccess,
    TableOwner,
    TriggerFunction,
)
from followup_cli.repository.stats import StatsStatements
from followup_cli.repository.story import StoryStatements

__all__ = [
    "CLAIM_LOCK_KEY",
    "AlertState",
    "AttemptRecord",
    "CheckFacts",
    "ColumnFacts",
    "DueFollowUp",
    "EffectiveAccess",
    "FailedFollowUp",
    "Failure",
    "ForeignKeyFacts",
    "LastRun",
    "Message",
    "PastRowSecurity",
    "Repository",
    "RepositoryBase",
    "RoleFacts",
    "RowSecurityFacts",
    "RunRecord",
    "StoredAttempt",
    "StoredCredential",
    "StoredFollowUp",
    "StoredRun",
    "TableAccess",
    "TableOwner",
    "TriggerFunction",
]


class Repository(
    DeliveryStatements,
    StatsStatements,
    AlertStatements,
    CredentialStatements,
    CleanupStatements,
    RequeueStatements,
    CatalogStatements,
    AppStatements,
    AccessStatements,
    StoryStatements,
):
    """Every statement of the tool, over one connection inside one transaction."""
