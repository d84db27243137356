"""The portfolio view: accounts and ARR per bucket, share in red, score
distribution, biggest movers over 7 and 30 days.

Each worker summarises the accounts it owns (:func:`summarise`); the worker
answering ``GET /portfolio`` merges every worker's part (:func:`merge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.model.account_state import AccountState
from service.model.scoring import UNKNOWN_STAGE

__all__ = [
    "BUCKETS",
    "DISTRIBUTION_BINS",
    "AccountSummary",
    "merge",
    "summarise",
    "summary_from_state",
    "summary_of",
]

BUCKETS = ("green", "yellow", "red")
#: The score distribution counts accounts in 10-point bins: 0-10, ..., 90-100.
DISTRIBUTION_BINS = 10


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """What the portfolio and the account list know of one account (its latest score)."""

    account_id: str
    bucket: str
    score: float
    delta_7d: float | None
    arr: float | None
    delta_30d: float | None = None
    grade: str | None = None
    segment: str | None = None
    #: The lifecycle stage of the snapshot (``unknown`` without one), as scoring sees it.
    stage: str | None = None
    csm_owner: str | None = None


def _snapshot_text(state: AccountState, name: str) -> str | None:
    entry = state.snapshot.get(name)
    return None if entry is None or entry[0] is None else str(entry[0])


def summary_of(
    state: AccountState,
    bucket: str,
    score: float,
    *,
    grade: str | None = None,
    delta_7d: float | None = None,
    delta_30d: float | None = None,
) -> AccountSummary:
    """The summary of a freshly scored account: its score plus its snapshot's
    ARR, segment, lifecycle stage and CSM owner."""
    arr = state.snapshot.get("arr")
    return AccountSummary(
        state.account_id,
        bucket,
        score,
        delta_7d,
        float(arr[0]) if arr else None,
        delta_30d,
        grade,
        _snapshot_text(state, "segment"),
        _snapshot_text(state, "lifecycle_stage") or UNKNOWN_STAGE,
        _snapshot_text(state, "csm_owner"),
    )


def summary_from_state(state: AccountState) -> AccountSummary | None:
    """The summary of an account from its state alone (``None`` if never scored).

    For accounts this worker has not rescored since it took them over (their
    state came from the changelog): the last score and bucket are in the
    state, the grade and trends are not.
    """
    if state.scored_at is None or state.bucket is None:
        return None
    return summary_of(state, state.bucket, float(state.score or 0.0))


def _empty_distribution() -> list[dict[str, int]]:
    return [{name: 0 for name in BUCKETS} for _ in range(DISTRIBUTION_BINS)]


def summarise(accounts: Iterable[AccountSummary], movers: int = 10) -> dict[str, Any]:
    """One worker's part: per-bucket counts and ARR, the score distribution
    (accounts per 10-point bin and bucket) and its own top movers."""
    buckets = {name: {"accounts": 0, "arr": 0.0} for name in BUCKETS}
    distribution = _empty_distribution()
    width = 100 / DISTRIBUTION_BINS
    moved: list[AccountSummary] = []
    moved_30d: list[AccountSummary] = []
    for account in accounts:
        slot = buckets.setdefault(account.bucket, {"accounts": 0, "arr": 0.0})
        slot["accounts"] += 1
        slot["arr"] += account.arr or 0.0
        index = min(max(int(account.score // width), 0), DISTRIBUTION_BINS - 1)
        cell = distribution[index]
        cell[account.bucket] = cell.get(account.bucket, 0) + 1
        if account.delta_7d:
            moved.append(account)
        if account.delta_30d:
            moved_30d.append(account)
    return {
        "buckets": buckets,
        "distribution": distribution,
        "movers": _top_movers(moved, "delta_7d", movers),
        "movers_30d": _top_movers(moved_30d, "delta_30d", movers),
    }


def _top_movers(moved: list[AccountSummary], field: str, count: int) -> dict[str, Any]:
    def delta(account: AccountSummary) -> float:
        value: float | None = getattr(account, field)
        return value or 0.0

    up = sorted((a for a in moved if delta(a) > 0), key=lambda a: (-delta(a), a.account_id))
    down = sorted((a for a in moved if delta(a) < 0), key=lambda a: (delta(a), a.account_id))
    return {
        "up": [_mover(a, field) for a in up[:count]],
        "down": [_mover(a, field) for a in down[:count]],
    }


def _mover(account: AccountSummary, field: str = "delta_7d") -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "score": account.score,
        "bucket": account.bucket,
        field: getattr(account, field),
    }


def merge(
    parts: Iterable[Mapping[str, Any]], *, red_share_target: float, movers: int = 10
) -> dict[str, Any]:
    """The whole portfolio from every worker's part.

    A part without ``distribution`` or ``movers_30d`` (a worker of an older
    version during a rolling upgrade) adds nothing to them.
    """
    buckets = {name: {"accounts": 0, "arr": 0.0} for name in BUCKETS}
    distribution = _empty_distribution()
    up: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    up_30d: list[dict[str, Any]] = []
    down_30d: list[dict[str, Any]] = []
    for part in parts:
        for name, slot in part["buckets"].items():
            total = buckets.setdefault(name, {"accounts": 0, "arr": 0.0})
            total["accounts"] += int(slot["accounts"])
            total["arr"] += float(slot["arr"])
        for cell, counts in zip(distribution, part.get("distribution", ()), strict=False):
            for name, count in counts.items():
                cell[name] = cell.get(name, 0) + int(count)
        up.extend(part["movers"]["up"])
        down.extend(part["movers"]["down"])
        up_30d.extend(part.get("movers_30d", {}).get("up", ()))
        down_30d.extend(part.get("movers_30d", {}).get("down", ()))
    accounts = sum(int(slot["accounts"]) for slot in buckets.values())
    arr = sum(float(slot["arr"]) for slot in buckets.values())
    for slot in buckets.values():
        slot["share"] = round(slot["accounts"] / accounts, 4) if accounts else 0.0
        slot["arr"] = round(slot["arr"], 2)
    red_share = buckets["red"]["share"]
    return {
        "accounts": accounts,
        "arr": round(arr, 2),
        "buckets": buckets,
        "red_share": red_share,
        "red_share_target": red_share_target,
        "red_share_within_target": red_share <= red_share_target,
        "distribution": distribution,
        "movers": {
            "up": sorted(up, key=lambda m: (-m["delta_7d"], m["account_id"]))[:movers],
            "down": sorted(down, key=lambda m: (m["delta_7d"], m["account_id"]))[:movers],
        },
        "movers_30d": {
            "up": sorted(up_30d, key=lambda m: (-m["delta_30d"], m["account_id"]))[:movers],
            "down": sorted(down_30d, key=lambda m: (m["delta_30d"], m["account_id"]))[:movers],
        },
    }
