"""The push a follow-up becomes: title, headers, and the body cut to fit APNs' limit."""

from __future__ import annotations

import json

from followup_cli.push import (
    ELLIPSIS,
    MAX_PAYLOAD_BYTES,
    PushRequest,
    encode_payload,
    fit_body,
    headers_for,
    notification_title,
    payload_dict,
)

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
