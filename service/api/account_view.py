"""``GET /accounts/{id}/overview``: what the account page shows, in one answer.

The health score (exactly as ``/accounts/{id}/health``), the state summary
(as ``/accounts/{id}/state``), and what a reader needs to understand them
in the scorecard's words: the label of every metric, the gates that fired
with their reasons (and whether one decided the bucket), the CSM pulse and
the bucket thresholds of the account's profile (for the bands of the score
history chart).

``profile`` and ``gates`` are the health score's own; ``pulse`` is the newest
pulse even once expired (the score shows only a live one).
"""

from __future__ import annotations

from typing import Any

from schemas.outputs import format_utc
from service.model.account_state import AccountState
from service.model.scorecard import ResolvedProfile, Scorecard
from service.model.scoring import score_at

__all__ = ["account_overview"]


def _profile(scorecard: Scorecard, name: str) -> ResolvedProfile:
    for profile in scorecard.resolved_profiles:
        if profile.name == name:
            return profile
    return scorecard.resolved_profiles[-1]


def account_overview(state: AccountState, scorecard: Scorecard, as_of: int) -> dict[str, Any]:
    """The overview of a scored account at ``as_of`` (epoch ms, at or after its last score).

    ``gates``: the health score's ``[{name, reason, effect, bucket, decided}]``,
    the gates that fired (``effect`` ``cap``: the bucket is at most ``bucket``,
    ``lift``: raised to it; ``decided``: that gate set the bucket). ``pulse``:
    ``{rating, reason, author, occurred_at, expires_at, expired}`` or ``None``
    (``author`` is ``None`` when not known; times in RFC 3339).
    """
    health: dict[str, Any] = score_at(state, as_of, scorecard).model_dump(mode="json")
    profile = _profile(scorecard, health["profile"])
    labels = {name: scorecard.label(name) for name in scorecard.metrics}
    buckets = profile.buckets
    return {
        "account_id": state.account_id,
        "health": health,
        "profile": health["profile"],
        "gates": health["gates"],
        "pulse": _pulse(state, as_of),
        "labels": labels,
        "buckets": {
            "green": buckets.green,
            "yellow": buckets.yellow,
            "hysteresis": buckets.hysteresis,
        },
        "state": state.summary(),
    }


def _pulse(state: AccountState, as_of: int) -> dict[str, Any] | None:
    if state.pulse is None:
        return None
    rating, reason, occurred_at, expires_at = state.pulse[:4]
    return {
        "rating": rating,
        "reason": reason,
        "author": state.pulse[4] if len(state.pulse) > 4 else None,
        "occurred_at": format_utc(occurred_at),
        "expires_at": None if expires_at is None else format_utc(expires_at),
        "expired": expires_at is not None and expires_at <= as_of,
    }
