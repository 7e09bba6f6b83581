"""Admin alerts: a Slack-compatible incoming webhook, or the log at ERROR level.

Alert texts carry follow-up ids and reasons only, never message text or child data.
A failing webhook is logged and otherwise ignored: alerting never fails a run.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Protocol

log = logging.getLogger("followups.alerts")


class Alerter(Protocol):
    def alert(self, text: str) -> bool: ...


class LogAlerter:
    def alert(self, text: str) -> bool:
        log.error("ALERT: %s", text)
        return True


class WebhookAlerter:
    """POSTs {"text": ...} as JSON. The URL is a secret and never appears in output."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout

    def alert(self, text: str) -> bool:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(
            self._url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
            return True
        except urllib.error.HTTPError as exc:
            log.warning("alert webhook answered HTTP %s; alert was: %s", exc.code, text)
        except Exception as exc:  # alerting never fails a run, whatever the endpoint does
            log.warning("alert webhook unreachable (%s); alert was: %s", type(exc).__name__, text)
        return False


def make_alerter(webhook_url: str | None) -> Alerter:
    return WebhookAlerter(webhook_url) if webhook_url else LogAlerter()


def ping_heartbeat(url: str, timeout: float = 5.0) -> bool:
    """GET the dead-man's-switch URL (healthchecks.io style). Never raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
        return True
    except Exception as exc:  # a monitor's trouble never fails a run
        # The URL may embed a secret token: name the failure only.
        log.warning("heartbeat ping failed (%s)", type(exc).__name__)
        return False
