"""APNs' reasons (the `reason` of an error answer) and what each says about us: our
setup, the connection, the device token. Words only: imported by push.protocol for the
layers above, so nothing heavy is loaded here."""

from __future__ import annotations

# APNs reasons that say our own setup is wrong: the same answer would come for every
# follow-up, so the run stops and marks nothing failed. TooManyProviderTokenUpdates is
# one: APNs refuses our token until 20 minutes after the key's last renewal (something
# else signs tokens with the same key, or a host's clock is far off).
CONFIG_REASONS = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
        "TooManyProviderTokenUpdates",
        "BadTopic",
        "MissingTopic",
        "TopicDisallowed",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "BadPath",
        "MethodNotAllowed",
        "InvalidPushType",
    }
)
# After these the connection takes no new streams; its other streams are still answered.
RETIRE_CONNECTION_REASONS = frozenset({"Timeout", "IdleTimeout", "Shutdown"})
# Transient answers that show APNs is up (429: too many pushes to one device): the
# outage breaker does not count them.
NOT_AN_OUTAGE_REASONS = frozenset({"TooManyRequests"})
# This device token will never work: a requeue needs a new token.
DEAD_TOKEN_REASONS = frozenset(
    {
        "BadDeviceToken",
        "Unregistered",
        "ExpiredToken",  # 410: APNs' newer answer for a token it no longer serves
        "DeviceTokenNotForTopic",
    }
)


def config_hint(reason: str | None) -> str:
    """What the operator checks after APNs refused our configuration with `reason`."""
    if reason == "TooManyProviderTokenUpdates":
        return (
            "APNs refused a provider token renewed within 20 minutes of the last one: "
            "something else signs tokens with this key (give each sender its own key) or a "
            "host's clock is far off. The next run tries again with the same token."
        )
    if reason == "ExpiredProviderToken":
        return "APNs calls a freshly signed provider token expired: check the host's clock (NTP)."
    return "Check FOLLOWUPS_APNS_KEY_FILE, _KEY_ID, _TEAM_ID, _TOPIC and _ENV."
