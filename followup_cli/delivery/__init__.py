"""send-due: every due follow-up delivered exactly once (one in-app message row, status
sent), in scheduled order per conversation, even with several runners, push service
failures, an app's cancel or a process killed mid-run.

One module per promise; run.py wires them (its docstring lists them). What other
modules use is exported here.
"""

from followup_cli.delivery.decisions import (
    MAX_RETRY_PAUSE,
    MAX_UNFINISHED,
    PushedBatch,
    attempt_records,
)
from followup_cli.delivery.finish import MessageClock, finish_batch
from followup_cli.delivery.leases import renew_periodically
from followup_cli.delivery.run import send_due
from followup_cli.delivery.stop import STOP_GRACE_SECONDS, RunStop

__all__ = [
    "MAX_RETRY_PAUSE",
    "MAX_UNFINISHED",
    "STOP_GRACE_SECONDS",
    "MessageClock",
    "PushedBatch",
    "RunStop",
    "attempt_records",
    "finish_batch",
    "renew_periodically",
    "send_due",
]
