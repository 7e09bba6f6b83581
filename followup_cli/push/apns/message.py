"""The request APNs receives for one notification: `POST /3/device/<token>` with
push.payload's headers and payload (the body cut by fit_body, on the very bytes sent).
The pusher sends it and test-send shows it, both from `describe`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from followup_cli.push.payload import fit_body, headers_for, payload_dict
from followup_cli.push.protocol import PushRequest, RequestView

if TYPE_CHECKING:
    from followup_cli.settings import Settings


def apns_path(request: PushRequest) -> str:
    return f"/3/device/{request.device_token}"


def describe(request: PushRequest, settings: Settings) -> RequestView:
    """The headers (the authorization aside) and the payload of this notification's
    request. No apns-id of ours: APNs makes one and answers with it (one header less to
    encode)."""
    return RequestView(
        headers=headers_for(request, settings.apns_topic),
        payload=payload_dict(request, fit_body(request)),
    )
