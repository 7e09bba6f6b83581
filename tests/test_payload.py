"""The push a follow-up becomes: title, headers, the body cut to fit APNs' limit, the FCM
message, and which service a device token belongs to."""

from __future__ import annotations

import json

from followup_cli.push.fcm import FCM_PAYLOAD_MARGIN, fcm_message, retry_after_seconds
from followup_cli.push.payload import (
    ELLIPSIS,
    MAX_PAYLOAD_BYTES,
    encode_apns_payload,
    encode_payload,
    fit_body,
    headers_for,
    notification_title,
    payload_dict,
)
from followup_cli.push.protocol import PushRequest
from followup_cli.push.service import TransientAttempt, wait_before_next_attempt
from followup_cli.push.tokens import normalize_token, token_service

FID = "5b0e7a43-2c1d-4b7e-9f10-0a1b2c3d4e5f"
CID = "0d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a"


def request(body: str, urgent: bool = False) -> PushRequest:
    return PushRequest(FID, CID, "a" * 64, "Follow-up from your provider", body, urgent)


def size(req: PushRequest, body: str) -> int:
    return len(encode_payload(payload_dict(req, body)))


def test_title_names_the_provider_when_known() -> None:
    """'Follow-up from Dr. X' with a provider name, a neutral title without."""
    assert notification_title("Chen") == "Follow-up from Dr. Chen"
    assert notification_title("Dr. Chen") == "Follow-up from Dr. Chen"
    assert notification_title(None) == "Follow-up from your provider"
    assert notification_title("  ") == "Follow-up from your provider"


def test_urgent_and_routine_headers_and_levels() -> None:
    """Urgent: priority 10, time-sensitive; routine: priority 5, active."""
    urgent, routine = request("x", urgent=True), request("x")
    assert headers_for(urgent, "t")["apns-priority"] == "10"
    assert payload_dict(urgent)["aps"]["interruption-level"] == "time-sensitive"
    assert headers_for(routine, "t")["apns-priority"] == "5"
    assert payload_dict(routine)["aps"]["interruption-level"] == "active"
    assert headers_for(routine, "t")["apns-collapse-id"] == FID
    assert headers_for(routine, "t")["apns-push-type"] == "alert"


def test_short_body_is_untouched() -> None:
    """A normal message goes out whole."""
    assert fit_body(request("How is Maya's fever today?")) == "How is Maya's fever today?"


def test_long_ascii_body_is_cut_to_fit_4096_bytes() -> None:
    """An over-long message is cut, ends with an ellipsis, and the payload fits exactly."""
    req = request("word " * 2000)
    body = fit_body(req)
    assert body.endswith(ELLIPSIS)
    assert size(req, body) <= MAX_PAYLOAD_BYTES
    assert size(req, body) > MAX_PAYLOAD_BYTES - 20  # not cut more than needed
    assert json.loads(encode_payload(payload_dict(req, body)))["aps"]["alert"]["body"] == body


def test_multibyte_text_is_cut_on_a_character_boundary() -> None:
    """Emoji and accented text: valid UTF-8 after the cut, no half emoji sequence."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one grapheme, 5 code points
    for unit in ("é", "\U0001f912", family, "e\u0301", "\U0001f44d\U0001f3fd"):
        req = request(unit * 3000)
        body = fit_body(req)
        assert size(req, body) <= MAX_PAYLOAD_BYTES
        kept = body[: -len(ELLIPSIS)]
        assert len(kept) % len(unit) == 0, f"cut inside {unit!r}"
        assert kept == unit * (len(kept) // len(unit))


def test_every_length_near_the_limit_fits_and_is_kept_whole_when_it_can_be() -> None:
    """Around the 4,096 bytes, for characters of every JSON size (ASCII, an escaped
    quote, 2- and 4-byte UTF-8, a control character escaped six bytes long): the payload
    always fits, and a body that fits whole is never cut."""
    for unit in ("a", '"', "é", "\U0001f912", "\x01"):
        for length in range(0, 4200 // len(json.dumps(unit, ensure_ascii=False)), 7):
            req = request(unit * length)
            body = fit_body(req)
            assert size(req, body) <= MAX_PAYLOAD_BYTES, (unit, length)
            whole = size(req, req.body) <= MAX_PAYLOAD_BYTES
            assert (body == req.body) == whole, (unit, length)


# -- which service a token belongs to ---------------------------------------------------

FCM_TOKEN = "dGhpcyBpcyBhbiBpZA:APA91bH" + "x1_Y-z" * 25


def test_apns_tokens_forgive_spaces_and_case_fcm_tokens_keep_their_case() -> None:
    """One home for token rules: hex is APNs (lower-cased), FCM tokens keep their case."""
    assert normalize_token(" ".join(["AB" * 16] * 2)) == "ab" * 32
    assert normalize_token("AB" * 32 + "\n") == "ab" * 32
    assert normalize_token(" " + FCM_TOKEN + "\n") == FCM_TOKEN
    assert normalize_token("   ") is None


def test_token_service_by_shape() -> None:
    """64 hex: APNs. Long URL-safe base64 with a colon: FCM. Anything else: neither."""
    assert token_service("ab" * 32) == "apns"
    assert token_service(FCM_TOKEN) == "fcm"
    assert token_service(FCM_TOKEN.replace(":", "")) is None  # no colon
    assert token_service(FCM_TOKEN[:60]) is None  # too short
    assert token_service(FCM_TOKEN + "/=") is None  # not URL-safe base64
    assert token_service("ab" * 31) is None
    assert token_service("not-a-token") is None


def test_fcm_message_carries_the_apns_payloads_content() -> None:
    """Same title, body (cut shorter, for FCM's own keys) and ids; strings only in data."""
    req = PushRequest(FID, CID, FCM_TOKEN, "Follow-up", "x" * 5000, True, service="fcm")
    message = fcm_message(req)["message"]
    assert message["token"] == FCM_TOKEN
    assert set(message) == {"token", "notification", "data", "android", "apns"}
    assert all(isinstance(v, str) for v in message["data"].values())
    assert message["android"] == {
        "priority": "high",
        "collapse_key": FID,
        "notification": {"sound": "default"},
    }
    body = message["notification"]["body"]
    assert body.endswith(ELLIPSIS)
    assert size(req, body) <= MAX_PAYLOAD_BYTES - FCM_PAYLOAD_MARGIN


def test_retry_after_is_the_shortest_wait_before_the_next_attempt() -> None:
    """The wait between attempts is jittered exponential backoff, but never shorter than
    the Retry-After the failed attempt carried."""
    waits = wait_before_next_attempt(factor=0.5)
    next(waits)
    assert 0 <= waits.send(TransientAttempt()) <= 0.5
    assert waits.send(TransientAttempt(retry_after=7.0)) >= 7.0
    assert 0 <= waits.send(TransientAttempt()) <= 2.0


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_the_apns_payload_put_together_is_the_encoded_payload_byte_for_byte() -> None:
    """The bytes the APNs pusher sends (encode_apns_payload) and the payload test-send
    shows, encoded (encode_payload of payload_dict), for texts of every kind: quotes,
    backslashes, control characters, 2- to 4-byte UTF-8, line and paragraph separators,
    empty ones; with and without a conversation, urgent or not, generic or not."""
    import random

    rng = random.Random(20261207)
    alphabet = [
        *"abc XYZ 019",
        '"',
        "\\",
        "/",
        "\n",
        "\t",
        "\x00",
        "\x1f",
        "\x7f",
        "\u00e9",
        "\u2028",
        "\u2029",
        "\u200d",
        "\ufe0f",
        "\U0001f912",
        "\U0001f468",
        "\u4e2d",
    ]

    def text(limit: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))

    for n in range(2_000):
        req = PushRequest(
            follow_up_id=text(40) if n % 7 == 0 else FID,
            conversation_id="" if n % 3 == 0 else (text(20) if n % 5 == 0 else CID),
            device_token="a" * 64,
            title=text(30),
            body=text(200),
            urgent=n % 2 == 0,
            mutable_content=n % 4 == 1,
        )
        body = fit_body(req) if n % 2 else req.body
        assert encode_apns_payload(req, body) == encode_payload(payload_dict(req, body)), n
