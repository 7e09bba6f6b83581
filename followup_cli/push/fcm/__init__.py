"""Firebase Cloud Messaging (FOLLOWUPS_PUSH=fcm): its HTTP v1 API, with a Google service
account's OAuth 2 access tokens.

- reasons: FCM's error codes (configuration, transient, dead token) and the operator's
  hint after a configuration stop
- message: the request of one notification (fcm_message, headers, path), for the pusher
  and test-send, and the message name FCM answers with
- errors: reading an error answer (read_error, Retry-After) and the verdict on an answer
- credentials: the service account's key file, read and checked (settings calls it at
  start)
- access: the access tokens, fetched with google-auth and shared through the database
- pusher: FCMStrategy (what FCM does its own way) and FCMPusher

The names below are loaded when first used (push.lazy), so importing the reasons (as
push.protocol does) or the credentials (as settings does) loads neither h2 nor
google-auth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from followup_cli.push.lazy import lazy_exports

if TYPE_CHECKING:
    from followup_cli.push.fcm.access import REFRESH_MARGIN as REFRESH_MARGIN
    from followup_cli.push.fcm.access import RENEWAL_TIMEOUT as RENEWAL_TIMEOUT
    from followup_cli.push.fcm.access import SCOPE as SCOPE
    from followup_cli.push.fcm.access import STILL_USABLE as STILL_USABLE
    from followup_cli.push.fcm.access import AccessTokens as AccessTokens
    from followup_cli.push.fcm.access import CredentialStore as CredentialStore
    from followup_cli.push.fcm.access import DatabaseCredentialStore as DatabaseCredentialStore
    from followup_cli.push.fcm.access import MemoryCredentialStore as MemoryCredentialStore
    from followup_cli.push.fcm.access import TokenUnavailable as TokenUnavailable
    from followup_cli.push.fcm.access import service_account_fetcher as service_account_fetcher
    from followup_cli.push.fcm.credentials import read_fcm_credentials as read_fcm_credentials
    from followup_cli.push.fcm.errors import MAX_RETRY_AFTER_SECONDS as MAX_RETRY_AFTER_SECONDS
    from followup_cli.push.fcm.errors import FcmError as FcmError
    from followup_cli.push.fcm.errors import classify as classify
    from followup_cli.push.fcm.errors import judge as judge
    from followup_cli.push.fcm.errors import read_error as read_error
    from followup_cli.push.fcm.errors import retry_after_seconds as retry_after_seconds
    from followup_cli.push.fcm.message import FCM_PAYLOAD_MARGIN as FCM_PAYLOAD_MARGIN
    from followup_cli.push.fcm.message import describe as describe
    from followup_cli.push.fcm.message import fcm_headers as fcm_headers
    from followup_cli.push.fcm.message import fcm_message as fcm_message
    from followup_cli.push.fcm.message import fcm_path as fcm_path
    from followup_cli.push.fcm.message import message_name as message_name
    from followup_cli.push.fcm.pusher import FCMPusher as FCMPusher
    from followup_cli.push.fcm.pusher import FCMStrategy as FCMStrategy
    from followup_cli.push.fcm.reasons import CONFIG_REASONS as CONFIG_REASONS
    from followup_cli.push.fcm.reasons import DEAD_TOKEN_REASONS as DEAD_TOKEN_REASONS
    from followup_cli.push.fcm.reasons import TRANSIENT_REASONS as TRANSIENT_REASONS
    from followup_cli.push.fcm.reasons import config_hint as config_hint

_EXPORTS = {
    "REFRESH_MARGIN": "access",
    "RENEWAL_TIMEOUT": "access",
    "SCOPE": "access",
    "STILL_USABLE": "access",
    "AccessTokens": "access",
    "CredentialStore": "access",
    "DatabaseCredentialStore": "access",
    "MemoryCredentialStore": "access",
    "TokenUnavailable": "access",
    "service_account_fetcher": "access",
    "read_fcm_credentials": "credentials",
    "MAX_RETRY_AFTER_SECONDS": "errors",
    "FcmError": "errors",
    "classify": "errors",
    "judge": "errors",
    "read_error": "errors",
    "retry_after_seconds": "errors",
    "FCM_PAYLOAD_MARGIN": "message",
    "describe": "message",
    "fcm_headers": "message",
    "fcm_message": "message",
    "fcm_path": "message",
    "message_name": "message",
    "FCMPusher": "pusher",
    "FCMStrategy": "pusher",
    "CONFIG_REASONS": "reasons",
    "DEAD_TOKEN_REASONS": "reasons",
    "TRANSIENT_REASONS": "reasons",
    "config_hint": "reasons",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
