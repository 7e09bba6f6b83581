"""APNs' error answers, read as pyapns-client reads them and judged into our failure
classes.

What stays pyapns-client's: its exception class for each reason APNs documents (its
public `exceptions` module, by name) and its reading of an error answer (the JSON
`reason`; a 410's `timestamp`). `classify` sorts those classes into ours, and `judge`
gives the attempt loop its verdict, with the provider-token steps APNs asks for.

pyapns-client is imported only when an error answer is read: its package pulls in httpx
(about a tenth of a second of every run's start-up), and an accepted push needs none of it.
"""

from __future__ import annotations

import functools
import json
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

from followup_cli.push.apns.reasons import (
    CONFIG_REASONS,
    NOT_AN_OUTAGE_REASONS,
    RETIRE_CONNECTION_REASONS,
)
from followup_cli.push.h2client import Answer
from followup_cli.push.service import Renewal, Verdict
from followup_cli.vocabulary import Outcome

if TYPE_CHECKING:
    import pyapns_client.exceptions as apns_exc


@functools.cache
def _exceptions() -> ModuleType:
    import pyapns_client.exceptions

    return pyapns_client.exceptions


@functools.cache
def exception_classes() -> dict[str, type[apns_exc.APNSException]]:
    """pyapns-client's class for each APNs reason: BadDeviceTokenException for
    "BadDeviceToken", and so on. Its base classes (APNSException, APNSServerException,
    ...) name no reason."""
    module = _exceptions()
    return {
        name.removesuffix("Exception"): cls
        for name, cls in vars(module).items()
        if isinstance(cls, type)
        and issubclass(cls, module.APNSException)
        and name.endswith("Exception")
        and not name.startswith("APNS")
    }


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


class UnknownReason(Exception):
    """An error answer whose reason pyapns-client has no class for."""

    def __init__(self, status: int, reason: str, apns_id: str | None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.apns_id = status, reason, apns_id


def error_for_answer(
    status: int, apns_id: str | None, body: bytes
) -> apns_exc.APNSException | UnknownReason:
    """pyapns-client's reading of an error answer (APNSClient._push): the reason names
    its exception class; 410 carries a timestamp. Raises ValueError or KeyError on a body
    that is not such an answer."""
    apns_data = json.loads(body.decode("utf-8", "replace"))
    reason = apns_data["reason"]
    exception_class = exception_classes().get(reason) if isinstance(reason, str) else None
    if exception_class is None:
        safe = reason if isinstance(reason, str) and _WORD.fullmatch(reason) else "UnknownReason"
        return UnknownReason(status, safe, apns_id)
    kwargs: dict[str, Any] = {"status_code": status, "apns_id": apns_id}
    if issubclass(exception_class, _exceptions().UnregisteredException):
        kwargs["timestamp"] = apns_data["timestamp"]
    return exception_class(**kwargs)


def classify(
    exc: apns_exc.APNSException | UnknownReason,
) -> tuple[Outcome, str, int | None, str | None]:
    """(kind, reason, HTTP status, apns-id) of an error answer."""
    if isinstance(exc, UnknownReason):
        # A reason newer than pyapns-client (e.g. 410 ExpiredToken): judged by its status,
        # as APNs documents them: 410 a dead token, other 4xx this request, 5xx APNs.
        if exc.status >= 500:
            return Outcome.TRANSIENT, exc.reason, exc.status, exc.apns_id
        return Outcome.PERMANENT, exc.reason, exc.status, exc.apns_id
    reason = type(exc).__name__.removesuffix("Exception")
    status, apns_id = exc.status_code, exc.apns_id
    if reason in CONFIG_REASONS:
        return Outcome.CONFIG, reason, status, apns_id
    if isinstance(exc, _exceptions().APNSServerException):
        return Outcome.TRANSIENT, reason, status, apns_id
    # Device errors (BadDeviceToken, Unregistered, DeviceTokenNotForTopic) and the
    # remaining request errors (PayloadTooLarge, ...) concern this notification only.
    return Outcome.PERMANENT, reason, status, apns_id


def judge(answer: Answer) -> Verdict:
    """The verdict on one APNs answer."""
    apns_id = answer.headers.get("apns-id")
    if answer.status == 200:
        return Verdict(Outcome.SENT, None, 200, apns_id)
    try:
        error = error_for_answer(answer.status, apns_id, bytes(answer.body))
    except (ValueError, KeyError):  # a non-JSON body, a 410 without its timestamp
        return Verdict(Outcome.TRANSIENT, "UnreadableResponse")
    kind, reason, status, apns_id = classify(error)
    if isinstance(error, _exceptions().ExpiredProviderTokenException):
        # Sign the token again; still expired when freshly signed: this host's clock is
        # off, a configuration stop.
        return Verdict(Outcome.CONFIG, reason, status, apns_id, renewal=Renewal.RENEW)
    return Verdict(
        kind,
        reason,
        status,
        apns_id,
        retire=kind == Outcome.TRANSIENT and reason in RETIRE_CONNECTION_REASONS,
        outage=reason not in NOT_AN_OUTAGE_REASONS,
        # A renewal refused as too soon: the previous window's token, if still young.
        renewal=Renewal.FALL_BACK
        if isinstance(error, _exceptions().TooManyProviderTokenUpdatesException)
        else None,
    )
