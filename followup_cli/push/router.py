"""PushRouter (FOLLOWUPS_PUSH=apns,fcm): owns one pusher per service and sends each request
to the service its device token belongs to (PushRequest.service), all on one event loop,
so a run pushes to both at once."""

from __future__ import annotations

from followup_cli.push.protocol import EventLoopOwner, PushGate, PushOutcome, PushRequest
from followup_cli.push.service import ServicePusher
from followup_cli.report import ServiceHealth, ServiceStop


class PushRouter(EventLoopOwner):
    """Owns one pusher per service and hands each request to its token's service. The
    children's coroutines run on this router's loop (theirs is never started), so both
    services push concurrently in one run, and closing the router closes them on it."""

    def __init__(self, name: str, concurrency: int, pushers: dict[str, ServicePusher]) -> None:
        super().__init__()
        self.name = name
        self.concurrency = concurrency
        self.services = frozenset(pushers)
        self._pushers = pushers

    def stopped(self, service: str) -> ServiceStop | None:
        pusher = self._pushers.get(service)
        return None if pusher is None else pusher.stopped(service)

    def unanswered(self, service: str) -> ServiceStop | None:
        pusher = self._pushers.get(service)
        return None if pusher is None else pusher.unanswered(service)

    def health(self, service: str) -> ServiceHealth | None:
        pusher = self._pushers.get(service)
        return None if pusher is None else pusher.health(service)

    async def push(self, request: PushRequest, gate: PushGate | None = None) -> PushOutcome:
        pusher = self._pushers.get(request.service)
        if pusher is None:  # delivery only routes tokens of configured services here
            raise ValueError(f"no pusher for service '{request.service}'")
        return await pusher.push(request, gate)

    async def aclose(self) -> None:
        for pusher in self._pushers.values():
            await pusher.aclose()
