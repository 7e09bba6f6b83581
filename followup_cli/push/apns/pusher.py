"""The APNs strategy: what APNs does its own way inside ServicePusher's attempt loop.

Why not pyapns-client's own push(): it is synchronous and opens a TLS connection per
push (keep-alive off); a shared client is unsafe across threads; its push() retries
server errors three times by itself (so any outer retry would multiply attempts). The
requests go through h2client's small HTTP/2 client instead (about a fifth of httpx's
CPU per push), in the loop both services share (push.service). What APNs supplies:

- its request (push.apns.message: the payload and headers of push.payload, the very
  bytes its body cut was measured on) and its address (pyapns-client's URLs);
- the provider token (push.apns.provider_token: one per key and 30-minute window, the
  same in every process), made as each stream starts;
- its verdicts (push.apns.errors): ExpiredProviderToken signs the token again,
  TooManyProviderTokenUpdates falls back to the previous window's token, each once per
  attempt; IdleTimeout and Shutdown retire the connection; TooManyRequests is not an
  outage.

How the connection follows APNs' rules (docs/reliability.md, "The APNs connection") is
h2client's: one stream until the first answer, refused streams and GOAWAY not processed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from followup_cli.push.apns import errors
from followup_cli.push.apns.message import apns_path
from followup_cli.push.apns.provider_token import ProviderToken
from followup_cli.push.h2client import Answer
from followup_cli.push.payload import encode_apns_payload, fit_body, headers_for
from followup_cli.push.protocol import PushRequest
from followup_cli.push.service import (
    Outgoing,
    Renewal,
    ServicePusher,
    ServiceStrategy,
    Verdict,
)
from followup_cli.settings import Settings
from followup_cli.vocabulary import Service

log = logging.getLogger("followups.push")

# APNs' servers, as pyapns-client names them (APNSClient.BASE_URLS; a test holds the two
# equal), without importing it and httpx on every run.
BASE_URLS = {
    "production": "https://api.push.apple.com:443",
    "development": "https://api.development.push.apple.com:443",
}


class APNsStrategy(ServiceStrategy):
    """APNs' request, provider token and verdicts."""

    label = "APNs"
    # The path holds the device token; the collapse id is the follow-up's id.
    unique_headers = frozenset({":path", "apns-collapse-id"})

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        assert settings.apns_key_file and settings.apns_key_id and settings.apns_team_id
        key = load_pem_private_key(Path(settings.apns_key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the APNs key is not an ES256 key")
        self.token = ProviderToken(key, settings.apns_key_id, settings.apns_team_id)
        self.url = settings.apns_url or BASE_URLS[settings.apns_env]
        self.ca_file = settings.apns_ca_file

    def build(self, request: PushRequest) -> Outgoing:
        # What message.describe() shows test-send: its payload's bytes put together directly.
        headers = headers_for(request, self._settings.apns_topic)
        body = encode_apns_payload(request, fit_body(request))
        return Outgoing(apns_path(request), headers, body)

    def authorization(self, credential: str | None) -> str:
        return f"bearer {self.token.current()}"

    def judge(self, answer: Answer) -> Verdict:
        return errors.judge(answer)

    async def renew(self, step: Renewal, credential: str | None) -> bool:
        if step == Renewal.RENEW:
            self.token.forget()
            log.info("APNs called the provider token expired; signing it again")
            return True
        if self.token.fall_back():
            log.warning(
                "APNs refused this window's provider token as a renewal too soon after the "
                "last one; using the previous window's token"
            )
            return True
        return False


class APNsPusher(ServicePusher):
    """Pushes through APNs (FOLLOWUPS_PUSH=apns)."""

    service = Service.APNS
    name = "apns"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, APNsStrategy(settings))
