"""Device tokens: which push service a token belongs to, how it is cleaned up, and how it
appears in logs (masked, never whole)."""

from __future__ import annotations

import re

from followup_cli.vocabulary import Service

# APNs device tokens: 64 hexadecimal characters (after normalize_token).
_APNS_TOKEN = re.compile(r"[0-9a-f]{64}")
# FCM registration tokens: an instance id, a colon and a long URL-safe base64 part (about
# 150-200 characters today; Google promises no fixed length, so up to 4 KB is taken).
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_-]+:[A-Za-z0-9_-]+")
_FCM_TOKEN_LENGTH = range(100, 4097)


def normalize_token(token: str | None) -> str | None:
    """Whitespace is forgiven in any token. An APNs token (64 hex characters) is also
    forgiven its case; an FCM token keeps its case, which is part of the token."""
    if token is None:
        return None
    cleaned = "".join(token.split())
    if not cleaned:
        return None
    lowered = cleaned.lower()
    return lowered if _APNS_TOKEN.fullmatch(lowered) else cleaned


def token_service(token: str) -> Service | None:
    """The push service a normalized token belongs to, or None when it is neither an APNs
    device token nor an FCM registration token."""
    if _APNS_TOKEN.fullmatch(token):
        return Service.APNS
    if len(token) in _FCM_TOKEN_LENGTH and _FCM_TOKEN.fullmatch(token):
        return Service.FCM
    return None


def is_valid_token(token: str) -> bool:
    return token_service(token) is not None


def mask_token(token: str | None) -> str:
    """Device tokens appear in logs as their first 8 characters only."""
    if not token:
        return "-"
    return f"{token[:8]}\u2026"
