"""Builds the pusher FOLLOWUPS_PUSH asks for, and describes a request as its service
receives it. The only module of the push layer that knows every adapter; none of them
imports it, and each is imported only when used, so a run that pushes through one
service never loads the other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from followup_cli.push.log import LogPusher
from followup_cli.push.protocol import Pusher, PushRequest, RequestView
from followup_cli.vocabulary import Service

if TYPE_CHECKING:
    from followup_cli.db import Database
    from followup_cli.push.service import ServicePusher
    from followup_cli.settings import Settings


def make_pusher(settings: Settings, db: Database | None = None) -> Pusher:
    """The pusher FOLLOWUPS_PUSH asks for. `db` holds the FCM access token shared by every
    run and host; without it (tests, scripts) the token is kept in this process only."""
    services = settings.push_services
    if not services:
        return LogPusher()
    pushers: dict[str, ServicePusher] = {}
    # Imported only when there is something to push: they cost a fifth of a second.
    if Service.APNS in services:
        from followup_cli.push.apns.pusher import APNsPusher

        pushers[Service.APNS] = APNsPusher(settings)
    if Service.FCM in services:
        from followup_cli.push.fcm.pusher import FCMPusher

        pushers[Service.FCM] = FCMPusher(settings, db)
    if len(pushers) == 1:
        [only] = pushers.values()
        return only
    from followup_cli.push.router import PushRouter

    return PushRouter(settings.push, settings.push_concurrency, pushers)


def describe_request(request: PushRequest, settings: Settings) -> RequestView:
    """The headers (the authorization aside) and the payload of this notification's
    request, exactly as its token's service receives them (test-send shows them)."""
    if request.service == Service.FCM:
        from followup_cli.push.fcm.message import describe as describe_fcm

        return describe_fcm(request)
    from followup_cli.push.apns.message import describe as describe_apns

    return describe_apns(request, settings)
