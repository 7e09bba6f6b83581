"""The push a follow-up becomes, and the payload and headers APNs receives: built here
once, so the body is cut on the very bytes that are sent, and test-send shows them
(push.apns.message puts them together).

The payload is the JSON shape APNs and the parent app expect; FCM's message
(push.fcm.message.fcm_message) carries the same content in FCM v1's shape.
"""

from __future__ import annotations

import json
import unicodedata
from typing import TYPE_CHECKING, Any

from followup_cli.push.protocol import PushRequest
from followup_cli.vocabulary import Service

if TYPE_CHECKING:
    from followup_cli.repository import DueFollowUp
    from followup_cli.settings import Settings

# APNs accepts alert payloads up to 4,096 bytes.
MAX_PAYLOAD_BYTES = 4096
ELLIPSIS = "\u2026"
CONTENT_TYPE = "application/json; charset=utf-8"


def notification_title(provider_name: str | None) -> str:
    name = (provider_name or "").strip()
    if name.lower().startswith("dr."):
        name = name[3:].strip()
    return f"Follow-up from Dr. {name}" if name else "Follow-up from your provider"


def build_request(
    f: DueFollowUp, device_token: str, settings: Settings, service: str = Service.APNS
) -> PushRequest:
    """The push a follow-up becomes, for send-due and test-send alike.

    With FOLLOWUPS_PUSH_BODY=generic the body is FOLLOWUPS_PUSH_GENERIC_TEXT and nothing
    of the message goes out; mutable-content lets the app's notification service
    extension fetch the text by follow_up_id and show it as the phone's preview settings
    allow.
    """
    generic = settings.push_body == "generic"
    return PushRequest(
        follow_up_id=f.id,
        conversation_id=f.conversation_id or "",
        device_token=device_token,
        title=notification_title(f.provider_name),
        body=settings.push_generic_text if generic else (f.display_text or ""),
        urgent=(f.urgency or "").strip().lower() == "urgent",
        service=service,
        mutable_content=generic,
    )


def payload_dict(req: PushRequest, body: str | None = None) -> dict[str, Any]:
    """The JSON payload, in the shape APNs and the parent app expect. An empty body or
    conversation id is left out rather than sent empty."""
    text = req.body if body is None else body
    alert = {"title": req.title, "body": text} if text else {"title": req.title}
    aps: dict[str, Any] = {"alert": alert, "sound": "default"}
    if req.mutable_content:
        aps["mutable-content"] = 1
    if req.conversation_id:
        aps["thread-id"] = req.conversation_id
    aps["interruption-level"] = req.interruption_level
    return {
        "aps": aps,
        "conversation_id": req.conversation_id,
        "type": "follow_up",
        "follow_up_id": req.follow_up_id,
    }


# Non-ASCII stays UTF-8 (not \\u escapes): an emoji costs 4 bytes, not 12. One encoder
# for every push (json.dumps with options builds a new one each call).
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
# What the payload holds besides its strings' characters (keys, quotes, punctuation,
# "default", "follow_up", the interruption level), with room to spare.
_PAYLOAD_FRAME_BYTES = 256
# The most bytes one character of a string takes in the JSON: a control character
# escaped as \\u00XX.
_MAX_BYTES_PER_CHAR = 6


def encode_payload(payload: dict[str, Any]) -> bytes:
    return _JSON.encode(payload).encode()


_string = json.encoder.encode_basestring  # the encoder's own, in C: quotes and escapes


def encode_apns_payload(req: PushRequest, body: str) -> bytes:
    """The bytes of `encode_payload(payload_dict(req, body))`, put together directly: the
    same keys in the same (sorted) order, each string through the JSON encoder's own
    string function, with no dict built and walked for every push. A test holds the two
    equal byte for byte."""
    conversation = _string(req.conversation_id)
    alert = '{"body":' + _string(body) + "," if body else "{"
    aps = (
        '{"alert":' + alert + '"title":' + _string(req.title) + "},"
        '"interruption-level":"'
        + req.interruption_level
        + '",'
        + ('"mutable-content":1,' if req.mutable_content else "")
        + '"sound":"default"'
        + (',"thread-id":' + conversation if req.conversation_id else "")
        + "}"
    )
    return (
        '{"aps":'
        + aps
        + ',"conversation_id":'
        + conversation
        + ',"follow_up_id":'
        + _string(req.follow_up_id)
        + ',"type":"follow_up"}'
    ).encode()


def fit_body(req: PushRequest, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """The alert body, cut on a character boundary (with an ellipsis) so the whole payload
    fits `limit` bytes (APNs' 4,096). Never splits a combining mark or emoji sequence from
    its base."""
    chars = len(req.title) + len(req.body) + 2 * len(req.conversation_id) + len(req.follow_up_id)
    if _PAYLOAD_FRAME_BYTES + _MAX_BYTES_PER_CHAR * chars <= limit:
        return req.body  # fits whatever its characters are: no need to encode it to know
    if len(encode_payload(payload_dict(req))) <= limit:
        return req.body
    text = req.body
    lo, hi = 0, len(text)
    while lo < hi:  # largest prefix length that fits
        mid = (lo + hi + 1) // 2
        if len(encode_payload(payload_dict(req, text[:mid] + ELLIPSIS))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = lo
    while cut > 0 and _joins_previous(text, cut):
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS


def _joins_previous(text: str, index: int) -> bool:
    """Would cutting before text[index] break a grapheme (combining mark, ZWJ, modifier)?"""
    if index >= len(text):
        return False
    ch, prev = text[index], text[index - 1]
    return (
        unicodedata.combining(ch) != 0
        or ch in ("\u200d", "\ufe0f", "\ufe0e")
        or prev == "\u200d"
        or 0x1F3FB <= ord(ch) <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= ord(ch) <= 0xE007F  # tag sequences (subdivision flags)
        or (0x1F1E6 <= ord(ch) <= 0x1F1FF and 0x1F1E6 <= ord(prev) <= 0x1F1FF)
    )


def headers_for(req: PushRequest, topic: str | None) -> dict[str, str]:
    """APNs request headers, as sent (the authorization header aside). Values are strings:
    HTTP/2 header values are text."""
    headers = {
        "content-type": CONTENT_TYPE,
        "apns-push-type": "alert",
        "apns-priority": req.priority,
        "apns-collapse-id": req.follow_up_id,
    }
    if topic:
        headers["apns-topic"] = topic
    return headers
