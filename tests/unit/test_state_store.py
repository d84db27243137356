"""StateStore: at most ``live_limit`` states live, the rest as their bytes, results unchanged."""

from __future__ import annotations

import orjson
import pytest

from schemas.events import Event
from service.model.account_state import AccountState
from service.model.cadence import Cadence
from service.model.playbooks import default_playbooks
from service.model.scorecard import shipped_scorecard
from service.processing.replay import InvalidLine, decode_lines
from service.processing.state_store import StateStore
from service.tools.simulate import history_jsonl

END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _state(account: str, bucket: str | None = None) -> AccountState:
    state = AccountState.new(account)
    state.bucket = bucket
    return state


def test_past_the_limit_the_least_recently_used_are_held_as_their_bytes() -> None:
    store = StateStore(live_limit=2)
    a, b, c = _state("a", "green"), _state("b", "red"), _state("c")
    store[b"a"], store[b"b"] = a, b
    assert store[b"a"] is a  # a is now the most recently used
    store[b"c"] = c
    assert store.live_count == 2 and len(store) == 3
    assert sorted(store) == [b"a", b"b", b"c"] and b"b" in store
    assert store.live(b"b") is None
    assert store.encoded(b"b") == b.to_bytes()
    assert store.bucket(b"b") == "red" and store.bucket(b"a") == "green"
    assert store.encoded(b"a") is None  # live: no bytes
    assert store.encoded_count == 1 and store.decoded == 0

    again = store[b"b"]  # decoded, live again; a is the least recently used now
    assert again is not b and again.to_bytes() == b.to_bytes()
    assert store.decoded == 1
    assert store.live(b"b") is again and store.live(b"a") is None
    assert store.encoded(b"a") == a.to_bytes()


def test_readers_do_not_disturb_the_store() -> None:
    store = StateStore(live_limit=1)
    store[b"a"], store[b"b"] = _state("a", "yellow"), _state("b")
    copy = store.peek(b"a")
    assert copy is not None and copy.bucket == "yellow"
    assert store.live(b"a") is None and store.live(b"b") is not None
    assert store.decoded == 0
    assert store.peek(b"zz") is None and store.bucket(b"zz") is None
    assert store.get(b"zz") is None
    with pytest.raises(KeyError):
        store[b"zz"]


def test_removal_never_needs_the_bytes_decoded() -> None:
    store = StateStore(live_limit=1)
    store[b"a"], store[b"b"], store[b"c"] = _state("a"), _state("b"), _state("c")
    store.discard(b"a")
    store.discard(b"missing")
    del store[b"b"]
    assert list(store) == [b"c"] and store.decoded == 0
    with pytest.raises(KeyError):
        del store[b"b"]
    assert store.pop(b"b", None) is None
    store[b"d"] = _state("d")
    popped = store.pop(b"c")  # held encoded: pop returns it decoded
    assert popped.account_id == "c"
    store.clear()
    assert len(store) == 0 and store.bucket(b"d") is None


def test_a_replaced_cold_state_is_live_again() -> None:
    store = StateStore(live_limit=1)
    store[b"a"], store[b"b"] = _state("a", "red"), _state("b")
    fresh = _state("a", "green")
    store[b"a"] = fresh
    assert store.live(b"a") is fresh and store.encoded(b"a") is None
    assert store.bucket(b"a") == "green" and len(store) == 2


def test_no_limit_keeps_every_state_live() -> None:
    store = StateStore()
    for n in range(50):
        store[str(n).encode()] = _state(str(n))
    assert store.live_count == 50 and store.encoded_count == 0
    with pytest.raises(ValueError, match="live_limit"):
        StateStore(live_limit=-1)


def _events(accounts: int, days: int) -> list[Event]:
    lines = [
        line
        for chunk, _, _ in history_jsonl(accounts, days, END_MS, seed=11)
        for line in chunk.split(b"\n")
        if line
    ]
    return [item for _, item in decode_lines(lines) if not isinstance(item, InvalidLine)]


def _run(events: list[Event], states: dict[bytes, AccountState] | StateStore) -> list[bytes]:
    """Every output of the cadence over ``events`` and a final tick, as bytes."""
    card = shipped_scorecard("demo")
    cadence = Cadence(card, default_playbooks())
    out: list[bytes] = []
    for event in events:
        key = event.account_id.encode()
        state = states.get(key)
        if state is None:
            state = AccountState.new(event.account_id)
        outcome = cadence.event(state, event, now_ms=0)
        states[key] = state
        out.append(outcome.step.score_json() or b"-")
        out.extend(change.model_dump_json().encode() for change in outcome.step.changes)
        out.extend(orjson.dumps(trigger) for trigger in outcome.triggers)
    for key in sorted(states):
        state = states[key]
        outcome = cadence.timer(state, END_MS + 20 * 86_400_000, now_ms=0)
        out.append(outcome.step.score_json() or b"-")
        out.extend(orjson.dumps(trigger) for trigger in outcome.triggers)
        out.append(state.to_bytes())
    return out


def test_states_held_as_bytes_give_the_same_scores_changes_and_triggers() -> None:
    # 40 accounts with 4 live: over a third of the events decode their account's state.
    events = _events(accounts=40, days=25)
    store = StateStore(live_limit=4)
    expected = _run(events, {})
    assert _run(events, store) == expected
    assert store.decoded > len(events) // 3
    assert any(b'"trigger_id"' in line for line in expected), "the history fires playbooks"
    assert any(b'"change_id"' in line for line in expected), "the history changes buckets"
