"""The APNs provider token: one token per signing key and time window, the same bytes in
every process on every host.

APNs refuses a token renewed less than 20 minutes after the previous one
(429 TooManyProviderTokenUpdates) and one older than 60 minutes (403
ExpiredProviderToken), and it counts renewals per team and key, not per connection or
process. Cron starts a new process every minute, possibly on several hosts, so a token
minted per process would be refused on every run but the first. Instead the token is a
pure function of (key, key id, team id, time window):

- `iat` is the start of the current WINDOW_SECONDS window (clock time, so hosts on NTP
  agree), so a new token appears exactly once per window, never sooner, and is never
  older than the window when used;
- the signature is deterministic ECDSA (RFC 6979), so every process signs the same bytes.

Nothing is stored: no database table holds a credential, and a process that dies takes
nothing with it. See docs/reliability.md, "The APNs connection".
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from followup_cli.clock import utcnow

# 30 minutes: at least APNs' 20-minute minimum between renewals, and a token is at most
# 30 minutes old when used, half of APNs' 60-minute limit (room for clock drift).
WINDOW_SECONDS = 30 * 60
# The previous window's token is used after a refused renewal only while it is younger
# than this, well inside APNs' 60 minutes.
MAX_FALLBACK_AGE_SECONDS = 50 * 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: dict[str, object]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class _Signed:
    iat: int
    token: str


class ProviderToken:
    """ES256 JWTs for one APNs signing key, one per time window."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("APNs signing keys are P-256 (ES256) keys")
        self._key = key
        self._header = _b64url(_json({"alg": "ES256", "kid": key_id}))
        self._team_id = team_id
        self._current: _Signed | None = None
        self._pinned: _Signed | None = None  # the previous window's, after fall_back()

    @staticmethod
    def window_start(epoch_seconds: float) -> int:
        return int(epoch_seconds // WINDOW_SECONDS) * WINDOW_SECONDS

    def current(self) -> str:
        """The token for the window we are in (or the previous window's, after
        fall_back()); signed once per window and process."""
        now = utcnow().timestamp()
        iat = self.window_start(now)
        pinned = self._pinned
        if (
            pinned is not None
            and pinned.iat == iat - WINDOW_SECONDS
            and now - pinned.iat < MAX_FALLBACK_AGE_SECONDS
        ):
            return pinned.token
        signed = self._current
        if signed is None or signed.iat != iat:
            signed = self._current = _Signed(iat, self.sign(iat))
        return signed.token

    def fall_back(self) -> bool:
        """APNs refused this window's token as a renewal too soon after the last one.

        APNs may count a renewal from when it first *sees* a token: after a quiet spell
        the previous window's token may first have been used a minute before this window
        began. Until APNs takes the new one, the previous window's token, which it
        accepted, is still valid (under an hour old) for the first part of this window:
        use it in this process until it is MAX_FALLBACK_AGE_SECONDS old, by when 20
        minutes have passed and APNs takes this window's token. False when it is too old.
        """
        now = utcnow().timestamp()
        previous = self.window_start(now) - WINDOW_SECONDS
        if now - previous >= MAX_FALLBACK_AGE_SECONDS:
            return False
        self._pinned = _Signed(previous, self.sign(previous))
        return True

    def forget(self) -> None:
        """Drop the cached tokens (APNs called one expired): the next one is signed anew."""
        self._current = None
        self._pinned = None

    def sign(self, iat: int) -> str:
        """The token for a given `iat`: the same bytes whoever computes it."""
        claims = _b64url(_json({"iss": self._team_id, "iat": iat}))
        signing_input = f"{self._header}.{claims}".encode("ascii")
        der = self._key.sign(signing_input, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)  # JWS wants r || s, 32 bytes each, not DER
        signature = _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return f"{signing_input.decode('ascii')}.{signature}"
