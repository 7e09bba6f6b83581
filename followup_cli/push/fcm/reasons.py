"""FCM's error codes (google.firebase.fcm.v1.FcmError, or the error's status when it
carries none) and what each says about us: our project or credentials, FCM's state, the
registration token. Words only: imported by push.protocol for the layers above, so
nothing heavy is loaded here."""

from __future__ import annotations

CONFIG_REASONS = frozenset(
    {
        "SENDER_ID_MISMATCH",
        "THIRD_PARTY_AUTH_ERROR",
        "UNAUTHENTICATED",  # the access token refused twice, the second one fresh
        "PERMISSION_DENIED",  # the service account lacks the role, or the API is off
        "NOT_FOUND",  # no such project (a dead token answers UNREGISTERED)
        "TOKEN_REFUSED",  # the token endpoint refused our service account's assertion
    }
)
TRANSIENT_REASONS = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})
# This registration token will never work: a requeue needs a new token.
# INVALID_REGISTRATION_TOKEN is ours: an INVALID_ARGUMENT that names the token.
DEAD_TOKEN_REASONS = frozenset({"UNREGISTERED", "INVALID_REGISTRATION_TOKEN"})


def config_hint(reason: str | None) -> str:
    """What the operator checks after FCM refused our configuration with `reason`."""
    if reason == "SENDER_ID_MISMATCH":
        return (
            "The device token belongs to another Firebase project: check "
            "FOLLOWUPS_FCM_PROJECT_ID (and the service account's project) against the app's "
            "Firebase project."
        )
    if reason == "THIRD_PARTY_AUTH_ERROR":
        return (
            "Firebase could not reach APNs for an iOS token: upload a valid APNs "
            "authentication key in the Firebase console (Project settings, Cloud Messaging)."
        )
    return (
        "Check FOLLOWUPS_FCM_CREDENTIALS_FILE and FOLLOWUPS_FCM_PROJECT_ID, that the "
        "Firebase Cloud Messaging API is enabled, and that the service account has the "
        "Firebase Cloud Messaging API Admin role (cloudmessaging.messages.create)."
    )
