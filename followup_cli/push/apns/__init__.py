"""APNs (FOLLOWUPS_PUSH=apns): Apple's push service.

- reasons: APNs' reason words (configuration, retire the connection, not an outage, dead
  token) and the operator's hint after a configuration stop
- message: the request of one notification (path, headers, payload), for the pusher and
  test-send
- errors: pyapns-client's reading of an error answer, its classes sorted into ours, and
  the verdict on an answer
- provider_token: ProviderToken, one deterministic token per key and 30 minutes
- pusher: APNsStrategy (what APNs does its own way) and APNsPusher

The names below are loaded when first used (push.lazy), so importing the reasons (as
push.protocol does) loads neither pyapns-client nor cryptography.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from followup_cli.push.lazy import lazy_exports

if TYPE_CHECKING:
    from followup_cli.push.apns.errors import UnknownReason as UnknownReason
    from followup_cli.push.apns.errors import classify as classify
    from followup_cli.push.apns.errors import error_for_answer as error_for_answer
    from followup_cli.push.apns.errors import exception_classes as exception_classes
    from followup_cli.push.apns.errors import judge as judge
    from followup_cli.push.apns.message import apns_path as apns_path
    from followup_cli.push.apns.message import describe as describe
    from followup_cli.push.apns.provider_token import WINDOW_SECONDS as WINDOW_SECONDS
    from followup_cli.push.apns.provider_token import ProviderToken as ProviderToken
    from followup_cli.push.apns.pusher import APNsPusher as APNsPusher
    from followup_cli.push.apns.pusher import APNsStrategy as APNsStrategy
    from followup_cli.push.apns.reasons import CONFIG_REASONS as CONFIG_REASONS
    from followup_cli.push.apns.reasons import DEAD_TOKEN_REASONS as DEAD_TOKEN_REASONS
    from followup_cli.push.apns.reasons import NOT_AN_OUTAGE_REASONS as NOT_AN_OUTAGE_REASONS
    from followup_cli.push.apns.reasons import (
        RETIRE_CONNECTION_REASONS as RETIRE_CONNECTION_REASONS,
    )
    from followup_cli.push.apns.reasons import config_hint as config_hint

_EXPORTS = {
    "UnknownReason": "errors",
    "classify": "errors",
    "error_for_answer": "errors",
    "exception_classes": "errors",
    "judge": "errors",
    "apns_path": "message",
    "describe": "message",
    "WINDOW_SECONDS": "provider_token",
    "ProviderToken": "provider_token",
    "APNsPusher": "pusher",
    "APNsStrategy": "pusher",
    "CONFIG_REASONS": "reasons",
    "DEAD_TOKEN_REASONS": "reasons",
    "NOT_AN_OUTAGE_REASONS": "reasons",
    "RETIRE_CONNECTION_REASONS": "reasons",
    "config_hint": "reasons",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
