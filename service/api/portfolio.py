"""The portfolio view: accounts and ARR per bucket, share in red, biggest movers.

Each worker summarises the accounts it owns (:func:`summarise`); the worker
answering ``GET /portfolio`` merges every worker's part (:func:`merge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AccountSummary", "merge", "summarise"]

BUCKETS = ("green", "yellow", "red")


@dataclass(frozen=True, slots=True)
class AccountSummary:
    account_id: str
    bucket: str
    score: float
    delta_7d: float | None
    arr: float | None


def summarise(accounts: Iterable[AccountSummary], movers: int = 10) -> dict[str, Any]:
    """One worker's part: per-bucket counts and ARR, and its own top movers."""
    buckets = {name: {"accounts": 0, "arr": 0.0} for name in BUCKETS}
    moved: list[AccountSummary] = []
    for account in accounts:
        slot = buckets.setdefault(account.bucket, {"accounts": 0, "arr": 0.0})
        slot["accounts"] += 1
        slot["arr"] += account.arr or 0.0
        if account.delta_7d:
            moved.append(account)
    up = sorted((a for a in moved if (a.delta_7d or 0) > 0), key=lambda a: -(a.delta_7d or 0))
    down = sorted((a for a in moved if (a.delta_7d or 0) < 0), key=lambda a: a.delta_7d or 0)
    return {
        "buckets": buckets,
        "movers": {
            "up": [_mover(a) for a in up[:movers]],
            "down": [_mover(a) for a in down[:movers]],
        },
    }


def _mover(account: AccountSummary) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "score": account.score,
        "bucket": account.bucket,
        "delta_7d": account.delta_7d,
    }


def merge(
    parts: Iterable[Mapping[str, Any]], *, red_share_target: float, movers: int = 10
) -> dict[str, Any]:
    """The whole portfolio from every worker's part."""
    buckets = {name: {"accounts": 0, "arr": 0.0} for name in BUCKETS}
    up: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    for part in parts:
        for name, slot in part["buckets"].items():
            total = buckets.setdefault(name, {"accounts": 0, "arr": 0.0})
            total["accounts"] += int(slot["accounts"])
            total["arr"] += float(slot["arr"])
        up.extend(part["movers"]["up"])
        down.extend(part["movers"]["down"])
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
        "movers": {
            "up": sorted(up, key=lambda m: -m["delta_7d"])[:movers],
            "down": sorted(down, key=lambda m: m["delta_7d"])[:movers],
        },
    }
