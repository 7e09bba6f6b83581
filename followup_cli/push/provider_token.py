"""The APNs provider token, at its former address: it lives in push.apns.provider_token."""

from followup_cli.push.apns.provider_token import (
    MAX_FALLBACK_AGE_SECONDS,
    WINDOW_SECONDS,
    ProviderToken,
)

__all__ = ["MAX_FALLBACK_AGE_SECONDS", "WINDOW_SECONDS", "ProviderToken"]
