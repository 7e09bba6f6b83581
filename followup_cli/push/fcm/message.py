"""The request FCM receives for one notification: `POST /v1/projects/{project}/
messages:send` with FCM v1's message, the same content and semantics as the APNs
payload. The pusher sends it and test-send shows it, both from `describe`; FCM's answer
names the message sent (`message_name`)."""

from __future__ import annotations

import json
import re
from typing import Any

from followup_cli.push.payload import CONTENT_TYPE, MAX_PAYLOAD_BYTES, fit_body, payload_dict
from followup_cli.push.protocol import PushRequest, RequestView

# FCM hands an iPhone the same payload as the APNs pusher plus keys of its own
# (gcm.message_id, google.c.*), all within APNs' 4,096 bytes: the body is cut this much
# shorter.
FCM_PAYLOAD_MARGIN = 256
_SAFE_NAME = re.compile(r"[A-Za-z0-9_./:%-]{1,200}")


def fcm_message(req: PushRequest) -> dict[str, Any]:
    """The messages:send body: the same content and semantics as the APNs payload (the
    generic body of FOLLOWUPS_PUSH_BODY=generic too, built in push.payload.build_request), in FCM
    v1's shape (which refuses unknown fields, such as the legacy notification.sound)."""
    priority = "high" if req.urgent else "normal"
    # The APNs payload's aps, less the alert (FCM builds it from `notification`).
    aps = {k: v for k, v in payload_dict(req)["aps"].items() if k != "alert"}
    return {
        "message": {
            "token": req.device_token,
            "notification": {
                "title": req.title,
                "body": fit_body(req, MAX_PAYLOAD_BYTES - FCM_PAYLOAD_MARGIN),
            },
            # FCM data values must be strings.
            "data": {
                "conversation_id": req.conversation_id,
                "type": "follow_up",
                "follow_up_id": req.follow_up_id,
            },
            "android": {
                "priority": priority,
                "collapse_key": req.follow_up_id,
                "notification": {"sound": "default"},
            },
            # For FCM tokens on iPhones: what the APNs pusher puts in its headers and aps.
            "apns": {
                "headers": {"apns-collapse-id": req.follow_up_id, "apns-priority": req.priority},
                "payload": {"aps": aps},
            },
        }
    }


def fcm_headers() -> dict[str, str]:
    """The request headers besides the bearer token, which goes before them."""
    return {"content-type": CONTENT_TYPE}  # the same as every APNs request


def fcm_path(project_id: str) -> str:
    return f"/v1/projects/{project_id}/messages:send"


def describe(request: PushRequest) -> RequestView:
    """The headers (the authorization aside) and the body of this notification's
    messages:send request."""
    return RequestView(headers=fcm_headers(), payload=fcm_message(request))


def message_name(body: bytes | bytearray) -> str | None:
    """FCM's id of the message sent ("projects/p/messages/0:123..."), kept as the
    attempt's provider_id."""
    try:
        name = json.loads(bytes(body)).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and _SAFE_NAME.fullmatch(name) else None
