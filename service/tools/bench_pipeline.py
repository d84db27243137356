"""The whole processing path in process, without Kafka: microseconds per event per stage.

``python -m service.tools.bench_pipeline`` (or ``vitals bench --pipeline``) feeds
the simulator's history (by default the benchmark's: seed 7, 500 accounts, 30
days) through what a worker does with each record, one stage at a time, and
prints a table (stdout) and, with ``--output``, the JSON:

``decode``
    ``schemas.decode.decode_event`` of every message value (the Kafka path's
    checks: topic kind, key, future time, size);
``order``
    the per-partition event-time reorder buffer: a heap push and pop per event;
``apply``
    ``AccountState.apply`` alone (windows, maps, dedup);
``rescore``
    the scoring cadence (``on_event``: pending ticks, apply, rescore; daily timer
    ticks of every account of its partition, as the worker's timer runs them)
    minus ``apply``;
``playbooks``
    the same with the shipped playbooks decided at every rescore point
    (``service.model.cadence``) minus the cadence alone;
``outputs``
    the output record values: the score JSON of each account's newest step per
    batch (``Step.score_json``), every bucket change and trigger as JSON, built
    every 500 steps during the playbooks pass, as the worker builds them after
    each fetched batch (an evaluation reuses the component fragments cached by
    the previous batch's score JSON; building them all after the whole pass, as
    the first version of this bench did, missed that and counted 26 µs);
``changelog``
    ``AccountState.to_bytes`` of every account changed since the previous
    commit, one commit per ``--commit-every`` events (the worker commits about
    once a second).

Each stage runs on fresh copies of the same inputs, so the per-stage figures
add up to the path's cost; ``total`` is their sum and ``events/s`` the rate it
allows on one core for the pure path (the worker adds Kafka reads and sends).
Results are byte-identical to the worker's by construction (the same functions);
only time is measured.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic_core

from schemas.decode import decode_event
from schemas.events import Event
from service.model.account_state import AccountState
from service.model.cadence import Cadence
from service.model.playbooks import default_playbooks
from service.model.scorecard import Scorecard, shipped_scorecard
from service.model.scoring import Step
from service.processing.partitioning import account_partition
from service.tools.bench import code_info
from service.tools.simulate import SimEvent, generate_history

__all__ = ["STAGES", "PipelineResult", "main", "measure", "render"]

STAGES = ("decode", "order", "apply", "rescore", "playbooks", "outputs", "changelog")
#: 2026-11-01T00:00:00Z: a fixed end, so every run sees the same history.
END_MS = 1_793_491_200_000
DAY_MS = 86_400_000
PARTITIONS = 4


@dataclass
class PipelineResult:
    """Microseconds per event of each stage, and what was measured."""

    events: int
    accounts: int
    us_per_event: dict[str, float]
    #: Per event: share of rescores whose score changed, of steps with a bucket
    #: change, of steps with a trigger.
    shares: dict[str, float]

    @property
    def total_us(self) -> float:
        return sum(self.us_per_event.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "accounts": self.accounts,
            "us_per_event": {k: round(v, 2) for k, v in self.us_per_event.items()},
            "total_us_per_event": round(self.total_us, 2),
            "events_per_s_one_core": round(1e6 / self.total_us) if self.total_us else None,
            "shares": {k: round(v, 4) for k, v in self.shares.items()},
        }


def _history(accounts: int, days: int, seed: int) -> list[SimEvent]:
    return [e for e in generate_history(accounts, days, END_MS, seed=seed) if not e.invalid]


def _timed(run: Callable[[], object]) -> float:
    # CPU time of this process: the figure the stage costs, steadier than the
    # wall clock on a machine that also runs the broker or tests.
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        run()
        return time.process_time() - started
    finally:
        gc.enable()


def _cadence_pass(
    events: Sequence[Event],
    card: Scorecard,
    cadence: Cadence | None,
    steps: list[Any] | None,
    *,
    batch: int = 0,
    flush: Callable[[list[Any]], None] | None = None,
) -> float:
    """The worker's order of work: events, and at every UTC midnight crossed a
    timer tick of every account of the event's partition.

    With ``flush``, every ``batch`` steps (and at the end) are handed to it as
    the worker hands a batch's outputs to the producer: between evaluations,
    so what it caches with an evaluation serves the next ones as in the
    worker. Returns the CPU seconds spent in ``flush``.
    """
    pending: list[Any] = []
    flushed = 0.0

    def record(state: AccountState, outcome: Any) -> None:
        nonlocal flushed
        if steps is not None:
            steps.append((state, outcome))
        if flush is not None:
            pending.append((state, outcome))
            if len(pending) >= batch:
                started = time.process_time()
                flush(pending)
                flushed += time.process_time() - started
                pending.clear()

    states: dict[str, AccountState] = {}
    partition_of: dict[str, int] = {}
    by_partition: dict[int, list[AccountState]] = {}
    tick = card.rescore_interval_ms
    next_tick = (events[0].occurred_at // tick + 1) * tick
    plain = Cadence(card, None) if cadence is None else cadence
    for event in events:
        while event.occurred_at >= next_tick:
            for members in by_partition.values():
                for state in members:
                    record(state, plain.timer(state, next_tick))
            next_tick += tick
        known = states.get(event.account_id)
        if known is None:
            state = states[event.account_id] = AccountState.new(event.account_id)
            partition = account_partition(event.account_id.encode(), PARTITIONS)
            partition_of[event.account_id] = partition
            by_partition.setdefault(partition, []).append(state)
        else:
            state = known
        record(state, plain.event(state, event))
    if flush is not None and pending:
        started = time.process_time()
        flush(pending)
        flushed += time.process_time() - started
    return flushed


def measure(
    accounts: int = 500,
    days: int = 30,
    seed: int = 7,
    *,
    commit_every: int = 2000,
    batch: int = 500,
    scorecard: str = "demo",
    progress: Callable[[str], None] = lambda _: None,
) -> PipelineResult:
    """Run every stage over the same history; microseconds per event each."""
    card = shipped_scorecard(scorecard)
    playbooks = default_playbooks()
    playbooks.check_metrics(card)
    progress(f"simulating {accounts} accounts x {days} days (seed {seed})")
    sims = _history(accounts, days, seed)
    n = len(sims)
    now_ms = END_MS + DAY_MS
    topic_kinds = [s.topic_kind for s in sims]

    progress(f"decode: {n} events")
    decoded: list[Event] = []

    def decode_all() -> None:
        append = decoded.append
        for sim, kind in zip(sims, topic_kinds, strict=True):
            append(decode_event(sim.value, topic_kind=kind, key=sim.key, now_ms=now_ms))

    seconds: dict[str, float] = {"decode": _timed(decode_all)}
    events = sorted(decoded, key=lambda e: e.occurred_at)  # the history is in order

    def order_all() -> None:
        heaps: dict[int, list[tuple[int, int, Event]]] = {}
        for seq, event in enumerate(events):
            heapq.heappush(heaps.setdefault(seq % PARTITIONS, []), (event.occurred_at, seq, event))
        for heap in heaps.values():
            while heap:
                heapq.heappop(heap)

    progress("order")
    seconds["order"] = _timed(order_all)

    def apply_all() -> None:
        states: dict[str, AccountState] = {}
        for event in events:
            state = states.get(event.account_id)
            if state is None:
                state = states[event.account_id] = AccountState.new(event.account_id)
            state.apply(event, None, card.regular_features)

    progress("apply")
    seconds["apply"] = _timed(apply_all)
    progress("rescore (the cadence without playbooks)")
    cadence_s = _timed(lambda: _cadence_pass(events, card, None, None))
    seconds["rescore"] = max(0.0, cadence_s - seconds["apply"])

    # Outputs, per batch of `batch` steps as the worker hands them to the
    # producer: the newest score per account, every bucket change and trigger.
    def outputs(pending: list[Any]) -> None:
        newest: dict[int, Step] = {}
        for state, outcome in pending:
            step = outcome.step
            for change in step.changes:
                pydantic_core.to_json(change)
            for trigger in outcome.triggers:
                orjson.dumps(trigger)
            if step.evaluation is not None:
                newest[id(state)] = step
        for last in newest.values():
            last.score_json()

    progress("playbooks and outputs")
    steps: list[Any] = []
    flushed: list[float] = []
    with_playbooks = _timed(
        lambda: flushed.append(
            _cadence_pass(events, card, Cadence(card, playbooks), steps, batch=batch, flush=outputs)
        )
    )
    seconds["outputs"] = flushed[0]
    seconds["playbooks"] = max(0.0, with_playbooks - flushed[0] - cadence_s)

    # Changelog: states as they were at each commit are gone; to_bytes of
    # the final states, as often as the commits would have written them.
    writes = 0
    touched: set[int] = set()
    for i, (state, _) in enumerate(steps, start=1):
        touched.add(id(state))
        if i % commit_every == 0:
            writes += len(touched)
            touched.clear()
    writes += len(touched)
    finals = list({id(s): s for s, _ in steps}.values())

    def changelog() -> None:
        done = 0
        while done < writes:
            for state in finals:
                state.to_bytes()
                state._version += 1  # a change since the last write: no cached form
                done += 1
                if done >= writes:
                    break

    progress(f"changelog: {writes} state writes")
    seconds["changelog"] = _timed(changelog)
    rescores = sum(1 for _, o in steps if o.step.evaluation is not None)
    changed = sum(1 for _, o in steps if o.step.changes)
    fired = sum(1 for _, o in steps if o.triggers)
    return PipelineResult(
        events=n,
        accounts=accounts,
        us_per_event={stage: seconds[stage] * 1e6 / n for stage in STAGES},
        shares={
            "steps_per_event": len(steps) / n,
            "rescored_steps": rescores / max(1, len(steps)),
            "bucket_change_steps": changed / max(1, len(steps)),
            "trigger_steps": fired / max(1, len(steps)),
        },
    )


def render(result: PipelineResult, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(
        f"in-process path: {result.events} events, {result.accounts} accounts "
        "(CPU µs per event, one core)"
    )
    for stage in STAGES:
        lines.append(f"  {stage:<10} {result.us_per_event[stage]:8.2f}")
    lines.append(f"  {'total':<10} {result.total_us:8.2f}")
    if result.total_us:
        lines.append(f"  => {1e6 / result.total_us:,.0f} events/s for the pure path on one core")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.tools.bench_pipeline", description=__doc__
    )
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--commit-every", type=int, default=2000)
    parser.add_argument("--output", help="write the JSON here")
    args = parser.parse_args(argv)
    result = measure(
        args.accounts,
        args.days,
        args.seed,
        commit_every=args.commit_every,
        progress=lambda text: print(f"bench_pipeline: {text}", file=sys.stderr, flush=True),
    )
    code = code_info()
    print(render(result))
    print(
        f"  code: commit {(code['commit'] or 'unknown')[:12]}"
        f"{' with uncommitted changes' if code['dirty'] else ''}, {code['model']} scoring model"
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            json.dump({**result.as_dict(), "code": code}, out, indent=2)
            out.write("\n")


if __name__ == "__main__":
    main()
