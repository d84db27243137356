"""One path for an account's rescoring, shared by the stream and ``vitals replay``.

:class:`Cadence` runs the scoring cadence of :mod:`service.model.scoring`
(pending ticks, apply, rescore) and decides the playbooks at **every rescore
point** (each tick boundary and each applied event), with the playbook memory
kept in the account state. Because the playbooks see each point, not each call,
the triggers do not depend on when a driver runs an account's ticks: eagerly
at a timer tick (the stream) or lazily at the account's next event (replay)
gives the same rescore points in the same order, hence the same scores, bucket
changes and triggers.

Pure: no I/O; the caller publishes ``Outcome`` and counts what it wants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.events import Event
from schemas.outputs import BucketChange
from service.model.account_state import AccountState
from service.model.playbooks import PlaybookMemory, PlaybookSet, Suppressed, decide_point
from service.model.scorecard import Scorecard
from service.model.scoring import Evaluation, Step, on_event, on_timer

__all__ = ["Cadence", "Outcome"]


@dataclass(slots=True)
class Outcome:
    """What one cadence call produced: the step (scores, bucket changes), the
    playbook triggers to publish (message dicts, in order) and the triggers a
    cooldown held back."""

    step: Step
    triggers: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)


class Cadence:
    """The scoring cadence with its playbooks, for one scorecard and playbook set."""

    __slots__ = ("playbooks", "scorecard")

    def __init__(self, scorecard: Scorecard, playbooks: PlaybookSet | None = None) -> None:
        self.scorecard = scorecard
        self.playbooks = playbooks

    def event(
        self,
        state: AccountState,
        event: Event,
        *,
        now_ms: int | None = None,
        newest_read: int | None = None,
    ) -> Outcome:
        """Pending ticks up to the event's time, apply it, rescore at its time."""
        if self.playbooks is None:
            step = on_event(state, event, self.scorecard, now_ms=now_ms, newest_read=newest_read)
            return Outcome(step)
        points = _Points(self.playbooks, self.scorecard, state)
        step = on_event(
            state,
            event,
            self.scorecard,
            now_ms=now_ms,
            newest_read=newest_read,
            on_point=points.decide,
        )
        return points.outcome(step)

    def timer(self, state: AccountState, until: int, *, now_ms: int | None = None) -> Outcome:
        """The account's pending ticks up to ``until`` (silence decays health)."""
        if self.playbooks is None:
            return Outcome(on_timer(state, until, self.scorecard, now_ms=now_ms))
        points = _Points(self.playbooks, self.scorecard, state)
        step = on_timer(state, until, self.scorecard, now_ms=now_ms, on_point=points.decide)
        return points.outcome(step)


class _Points:
    """Decides the playbooks at each rescore point of one cadence call."""

    __slots__ = ("card", "memory", "outcome_triggers", "playbooks", "state", "suppressed")

    def __init__(self, playbooks: PlaybookSet, card: Scorecard, state: AccountState) -> None:
        self.playbooks = playbooks
        self.card = card
        self.state = state
        self.memory: PlaybookMemory | None = None
        self.outcome_triggers: list[dict[str, Any]] = []
        self.suppressed: list[Suppressed] = []

    def decide(self, evaluation: Evaluation, change: BucketChange | None) -> None:
        memory = self.memory
        if memory is None:
            memory = self.memory = PlaybookMemory.from_dict(self.state.playbooks)
        decision = decide_point(self.playbooks, self.card, self.state, evaluation, change, memory)
        self.outcome_triggers.extend(decision.triggers)
        self.suppressed.extend(decision.suppressed)

    def outcome(self, step: Step) -> Outcome:
        if self.memory is not None:
            self.state.playbooks = self.memory.to_dict() or None
        return Outcome(step, self.outcome_triggers, self.suppressed)
