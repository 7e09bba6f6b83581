"""The conversation chain: the one owner of the order promise within a batch.

A batch's follow-ups are grouped by conversation, each chain in scheduled order. Chains
are walked concurrently; a chain's follow-ups one after the other, pushed or in-app only
alike. A follow-up that stays scheduled ends its chain's walk: its service stopped
(configuration or outage), its attempts failed and it waits to be retried, the database
did not answer the cancel gate, or the run is stopping. The later follow-ups of that
conversation are then not delivered by this run, in-app only or through the other
service: they are parked (leased to this run until it ends, so that it does not claim
them again) or, when the run stops, handed back. Across batches, runs and runners, the
claim keeps the order (the repository's claim_due).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from followup_cli.push.protocol import PushOutcome, PushRequest
from followup_cli.repository import AttemptRecord, DueFollowUp

if TYPE_CHECKING:
    from followup_cli.delivery.decisions import Decisions
    from followup_cli.delivery.gate import CancelGate
    from followup_cli.delivery.plan import Plan

ProgressCallback = Callable[[int], None]


@dataclass
class Link:
    follow_up: DueFollowUp
    request: PushRequest | None  # None: delivered in-app only
    notes: list[AttemptRecord] = field(default_factory=list)
    started: bool = False  # its push began
    decided: bool = False  # handed to a part (delivered, failed, deferred, released, parked)


class Round(Protocol):
    """What a chain's walk needs of the push round it is part of."""

    decisions: Decisions
    gate: CancelGate

    def stopping(self) -> bool:
        """The run is ending: the rest of each chain is handed back."""
        ...

    def stopped(self, service: str) -> bool:
        """The push service stopped for this run (configuration or outage)."""
        ...

    async def push(self, request: PushRequest) -> PushOutcome: ...


@dataclass
class Chain:
    """One conversation's follow-ups of a batch, in scheduled order."""

    links: list[Link] = field(default_factory=list)

    async def walk(
        self,
        round_: Round,
        slots: dict[str, asyncio.Semaphore],
        progress: ProgressCallback | None,
    ) -> None:
        decisions = round_.decisions
        links = self.links
        for i, link in enumerate(links):
            req = link.request
            if req is None:
                if round_.stopping():
                    decisions.pass_over(links[i:], park=False)
                    return
                decisions.in_app(link)
                continue
            async with slots[req.service]:
                await decisions.wait_for_room()
                if round_.stopping():
                    decisions.pass_over(links[i:], park=False)
                    return
                if round_.stopped(req.service):
                    decisions.pass_over(links[i:], park=True)
                    return
                link.started = True
                outcome = await round_.push(req)
            round_.stopped(req.service)
            round_.gate.done(req.follow_up_id)
            goes_on = decisions.answered(link, outcome, stopping=round_.stopping())
            if progress is not None:
                progress(1)
            if not goes_on:
                # The conversation's later follow-ups must not overtake this one.
                decisions.pass_over(links[i + 1 :], park=not round_.stopping())
                return


def chains(batch: Sequence[DueFollowUp], plan: Plan) -> list[Chain]:
    """The batch's follow-ups to push or deliver in-app, one chain per conversation, in
    the batch's (scheduled) order; those the plan failed are in no chain."""
    requests = {f.id: req for f, req in plan.push}
    in_app = {f.id for f in plan.in_app}
    notes: dict[str, list[AttemptRecord]] = {}
    for note in plan.notes:
        notes.setdefault(note.follow_up_id, []).append(note)
    found: dict[str | None, Chain] = {}
    for f in batch:
        if f.id not in requests and f.id not in in_app:
            continue
        # Follow-ups without a conversation have no order to keep: each on its own.
        key = f.conversation_id if f.conversation_id is not None else f.id
        chain = found.get(key)
        if chain is None:
            chain = found[key] = Chain()
        chain.links.append(Link(f, requests.get(f.id), notes.get(f.id, [])))
    return list(found.values())
