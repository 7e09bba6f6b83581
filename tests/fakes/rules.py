"""Scripted answers and transport events, matched to requests in the order they were added.

Each `respond(...)` of a fake adds one rule: for one device token or for all, a number of
times or forever, either an answer (the service's own kind of answer) or an action on
the stream instead of any answer:

- "reset": the connection is dropped (TCP RST) once the fake's latency has passed;
- "stall": never answered; the stream keeps its slot until the client gives up on it;
- "refuse": the stream is reset with REFUSED_STREAM, which means "not processed".

A fake asks for actions where the network would act, before it judges the request, and
for answers where the service would answer, after the request's own checks (a service
refuses a malformed request before it looks at any device). The first rule that matches
wins and is used up by one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar, get_args

__all__ = ["ACTIONS", "Action", "Rule", "Rules"]

Action = Literal["reset", "stall", "refuse"]
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)

T = TypeVar("T")


@dataclass(eq=False)
class Rule(Generic[T]):
    """One scripted rule; what `respond(...)` returns, for `drop_rule`."""

    answer: T | None  # None: the rule is an action
    action: Action | None
    token: str | None  # None: every request
    remaining: int | None  # None: forever


class Rules(Generic[T]):
    """A fake's rules, safe to change from the test's thread while the server reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule[T]] = []

    def add(
        self,
        answer: T | None,
        *,
        action: str | None = None,
        token: str | None = None,
        times: int | None = None,
    ) -> Rule[T]:
        if action is not None and action not in ACTIONS:
            raise ValueError(f"action must be None, 'reset', 'stall' or 'refuse', not {action!r}")
        if times is not None and times < 1:
            raise ValueError("times must be None or >= 1")
        if answer is None and action is None:
            raise ValueError("a rule needs an answer or an action")
        rule = Rule(answer, action, token, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def action_for(self, token: str) -> Action | None:
        """The first action rule matching `token`, used up by one; None if there is none."""
        rule = self._take(token, acting=True)
        return None if rule is None else rule.action

    def answer_for(self, token: str) -> T | None:
        """The first answer rule matching `token`, used up by one; None if there is none."""
        rule = self._take(token, acting=False)
        return None if rule is None else rule.answer

    def drop(self, rule: Rule[T]) -> None:
        with self._lock:
            self._rules[:] = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take(self, token: str, *, acting: bool) -> Rule[T] | None:
        with self._lock:
            for rule in self._rules:
                if rule.token is not None and rule.token != token:
                    continue
                if (rule.action is not None) != acting:
                    continue
                if rule.remaining is not None:
                    if rule.remaining <= 0:
                        continue
                    rule.remaining -= 1
                return rule
        return None
