"""The FCM strategy: what Firebase Cloud Messaging's HTTP v1 API does its own way
inside ServicePusher's attempt loop, over h2client's HTTP/2 connection (many concurrent
streams on one connection, as for APNs). What FCM supplies:

- its request (push.fcm.message) and its address (FOLLOWUPS_FCM_URL, the project from
  the service account's key file, push.fcm.credentials);
- the access token (push.fcm.access), fetched, or waited for, before each request and
  sent as the stream starts unless FCM refused it meanwhile; a 401 refusal fetches a
  new one once per attempt;
- its verdicts (push.fcm.errors): a Retry-After longer than a run should wait trips the
  breaker at once.

While the breaker is suspect, streams go one at a time even on a connection whose limit
is high: FCM keeps its stream limit through an outage, where APNs drops to one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from followup_cli.push.fcm import errors
from followup_cli.push.fcm.access import (
    AccessTokens,
    CredentialStore,
    DatabaseCredentialStore,
    MemoryCredentialStore,
    service_account_fetcher,
)
from followup_cli.push.fcm.credentials import read_fcm_credentials
from followup_cli.push.fcm.message import describe, fcm_path
from followup_cli.push.h2client import Answer
from followup_cli.push.payload import encode_payload
from followup_cli.push.protocol import PushRequest
from followup_cli.push.service import (
    Outgoing,
    Renewal,
    ServicePusher,
    ServiceStrategy,
    Verdict,
)
from followup_cli.settings import FCM_DEFAULT_URL, Settings
from followup_cli.vocabulary import Service

if TYPE_CHECKING:
    from followup_cli.db import Database

log = logging.getLogger("followups.push")


class FCMStrategy(ServiceStrategy):
    """FCM's request, access token and verdicts."""

    label = "FCM"
    authorization_first = True
    one_stream_while_suspect = True

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        info, project = read_fcm_credentials(settings, load_key=False)
        self._path = fcm_path(project)
        store: CredentialStore = (
            DatabaseCredentialStore(db) if db is not None else MemoryCredentialStore()
        )
        self.tokens = AccessTokens(
            f"fcm:{info['client_email']}",
            store,
            service_account_fetcher(info, settings.fcm_ca_file, settings.push_timeout_seconds),
        )
        self.url = settings.fcm_url or FCM_DEFAULT_URL
        self.ca_file = settings.fcm_ca_file

    def build(self, request: PushRequest) -> Outgoing:
        view = describe(request)
        return Outgoing(self._path, view.headers, encode_payload(view.payload))

    async def credential(self) -> str:
        return await self.tokens.current()

    def authorization(self, credential: str | None) -> str:
        assert credential is not None
        return f"Bearer {self.tokens.latest(credential)}"

    def judge(self, answer: Answer) -> Verdict:
        return errors.judge(answer)

    async def renew(self, step: Renewal, credential: str | None) -> bool:
        if step != Renewal.RENEW or credential is None:
            return False
        log.info("FCM refused the access token; fetching a new one")
        await self.tokens.refused(credential)
        return True


class FCMPusher(ServicePusher):
    """Pushes through FCM HTTP v1 (FOLLOWUPS_PUSH=fcm). `db` holds the access token shared
    by every run and host; without it the token is kept in this process only."""

    service = Service.FCM
    name = "fcm"

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self._fcm = FCMStrategy(settings, db)
        super().__init__(settings, self._fcm)

    @property
    def tokens(self) -> AccessTokens:
        return self._fcm.tokens
