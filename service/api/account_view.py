"""``GET /accounts/{id}/overview``: what the account page shows, in one answer.

The health score (exactly as ``/accounts/{id}/health``), the state summary
(as ``/accounts/{id}/state``), and what a reader needs to understand them
in the scorecard's words: the label of every metric, the gates that fired
with their reasons (and whether one decided the bucket), the CSM pulse and
the bucket thresholds of the account's profile (for the bands of the score
history chart).

Where the health score itself carries ``profile``, ``gates`` or ``pulse``, those
are passed on unchanged; otherwise they are derived here from the same
evaluation, in the same shape.
"""

from __future__ import annotations

from typing import Any

from schemas.outputs import format_utc
from service.model.account_state import AccountState
from service.model.scorecard import ResolvedProfile, Scorecard
from service.model.scoring import evaluate, score_at

__all__ = ["account_overview"]


def _profile(scorecard: Scorecard, name: str) -> ResolvedProfile:
    for profile in scorecard.resolved_profiles:
        if profile.name == name:
            return profile
    return scorecard.resolved_profiles[-1]


def account_overview(state: AccountState, scorecard: Scorecard, as_of: int) -> dict[str, Any]:
    """The overview of a scored account at ``as_of`` (epoch ms, at or after its last score).

    ``gates``: ``[{name, reason, effect, bucket, decided}]``, the gates that fired
    (``effect`` ``cap``: the bucket is at most ``bucket``; ``decided``: that cap
    set the bucket, i.e. it capped below the score's own bucket and the account
    ended in ``bucket``). ``pulse``: ``{rating, reason, author, occurred_at,
    expires_at, expired}`` or ``None`` (``author`` is ``None`` when not known;
    times in RFC 3339).
    """
    health: dict[str, Any] = score_at(state, as_of, scorecard).model_dump(mode="json")
    evaluation = evaluate(state, as_of, scorecard)
    profile = _profile(scorecard, evaluation.profile)
    gates = health.get("gates")
    if gates is None:
        by_name = {gate.name: gate for gate in profile.gates}
        gates = [
            {
                "name": name,
                "reason": by_name[name].reason if name in by_name else "",
                "effect": "cap",
                "bucket": by_name[name].cap if name in by_name else None,
                # Several gates can cap below the score's bucket; the one
                # whose cap is the bucket the account ended in set it.
                "decided": name in evaluation.capping_gates
                and name in by_name
                and by_name[name].cap == evaluation.bucket,
            }
            for name in evaluation.gates_fired
        ]
    pulse = health["pulse"] if "pulse" in health else _pulse(state, as_of)
    labels = {name: metric.description for name, metric in scorecard.metrics.items()}
    buckets = profile.buckets
    return {
        "account_id": state.account_id,
        "health": health,
        "profile": health.get("profile", evaluation.profile),
        "gates": gates,
        "pulse": pulse,
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
        # The state keeps no author (the pulse event's optional ``author``).
        "author": None,
        "occurred_at": format_utc(occurred_at),
        "expires_at": None if expires_at is None else format_utc(expires_at),
        "expired": expires_at is not None and expires_at <= as_of,
    }
