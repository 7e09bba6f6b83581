"""FCM's error answers, read and judged as FCM documents them (docs/reliability.md):
UNREGISTERED and an INVALID_ARGUMENT about the registration token are dead tokens;
other INVALID_ARGUMENTs are this notification's; SENDER_ID_MISMATCH,
THIRD_PARTY_AUTH_ERROR and an access token refused twice are configuration;
QUOTA_EXCEEDED, UNAVAILABLE and INTERNAL are transient, and their Retry-After is the
shortest wait before the next attempt."""

from __future__ import annotations

import email.utils
import json
import re
from dataclasses import dataclass
from datetime import UTC

from followup_cli.clock import utcnow
from followup_cli.push.fcm.message import message_name
from followup_cli.push.fcm.reasons import CONFIG_REASONS, TRANSIENT_REASONS
from followup_cli.push.h2client import Answer
from followup_cli.push.service import Renewal, Verdict
from followup_cli.vocabulary import Outcome

# A Retry-After longer than this is not waited out within a run: the run stops pushing
# to FCM (an outage stop: nothing failed) and the next run tries again.
MAX_RETRY_AFTER_SECONDS = 30.0
# How INVALID_ARGUMENT names the registration token as the culprit.
_TOKEN_FIELD = "message.token"
_TOKEN_MESSAGE = re.compile(r"registration token", re.IGNORECASE)
_SAFE_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


@dataclass(frozen=True)
class FcmError:
    """One error answer of messages:send, reduced to what decides its class."""

    http_status: int
    code: str  # the FcmError errorCode, else the error's status, else "HTTP_<status>"
    token_field: bool  # INVALID_ARGUMENT names the registration token
    retry_after: float | None

    @property
    def access_token_refused(self) -> bool:
        return self.http_status == 401 and self.code == "UNAUTHENTICATED"


def read_error(status: int, headers: dict[str, str], body: bytes) -> FcmError:
    """Google's error shape: {"error": {"code", "message", "status", "details": [...]}},
    details carrying an FcmError (errorCode) and a BadRequest (fieldViolations)."""
    code: str | None = None
    token_field = False
    try:
        error = json.loads(body.decode("utf-8", "replace")).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    fields: list[str] = []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.firebase.fcm.v1.FcmError"):
            code = detail.get("errorCode") if isinstance(detail.get("errorCode"), str) else code
        elif kind.endswith("google.rpc.BadRequest"):
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict):
                    fields.append(str(violation.get("field", "")))
    code = code or (error.get("status") if isinstance(error.get("status"), str) else None)
    if code == "INVALID_ARGUMENT":
        message = str(error.get("message", ""))
        token_field = _TOKEN_FIELD in fields or (
            not fields and bool(_TOKEN_MESSAGE.search(message))
        )
    if code is None or not _SAFE_CODE.fullmatch(code):
        code = f"HTTP_{status}"
    return FcmError(status, code, token_field, retry_after_seconds(headers.get("retry-after")))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())


def classify(error: FcmError) -> tuple[Outcome, str]:
    """(kind, reason) of an error answer (not the access-token refusal, renewed first)."""
    code = error.code
    if code == "INVALID_ARGUMENT":
        return Outcome.PERMANENT, "INVALID_REGISTRATION_TOKEN" if error.token_field else code
    if code == "UNREGISTERED":
        return Outcome.PERMANENT, code
    if code in CONFIG_REASONS:
        return Outcome.CONFIG, code
    if code in TRANSIENT_REASONS or error.http_status >= 500 or error.http_status == 429:
        return Outcome.TRANSIENT, code
    # Any other request error concerns this notification only.
    return Outcome.PERMANENT, code


def judge(answer: Answer) -> Verdict:
    """The verdict on one FCM answer."""
    if answer.status == 200:
        return Verdict(Outcome.SENT, None, 200, message_name(answer.body))
    error = read_error(answer.status, answer.headers, bytes(answer.body))
    if error.access_token_refused:
        # Fetch a new access token; refused again, freshly fetched: the service account
        # cannot send, a configuration stop.
        return Verdict(Outcome.CONFIG, error.code, answer.status, renewal=Renewal.RENEW)
    kind, reason = classify(error)
    return Verdict(
        kind,
        reason,
        answer.status,
        retry_after=error.retry_after,
        trip=kind == Outcome.TRANSIENT and (error.retry_after or 0) > MAX_RETRY_AFTER_SECONDS,
    )
