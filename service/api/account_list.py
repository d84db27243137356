"""``GET /accounts``: the accounts of every worker, filtered, sorted and paged on the server.

Each worker filters and sorts the accounts it owns and sends the first
``offset + page_size`` of them with its counts (:func:`local_part`); the
worker that was asked merges the parts, which are sorted the same way, and
cuts the page (:func:`merge_parts`). Sorting is total (ties go by account id),
so a page is the same whichever worker answers and however the accounts are
spread over the workers.

Sorts (``sort``), each with its natural order (``order=asc|desc`` reverses it;
accounts without the sorted value come last either way):

* ``arr_at_risk`` (default): red accounts first, then yellow, then green, each
  by ARR, largest first: the at-risk list ordered by the revenue at stake;
* ``score``: lowest first;
* ``movers_7d`` / ``movers_30d``: the largest fall over 7 / 30 days first
  (``desc``: the largest rise first);
* ``arr``: largest first;
* ``account_id``: alphabetical (``order`` is ignored).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from service.api.portfolio import BUCKETS, AccountSummary, merge, summarise

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "SORTS",
    "AccountQuery",
    "QueryError",
    "local_part",
    "merge_parts",
]

#: sort -> its natural order (``True`` = descending).
SORTS: Final[dict[str, bool]] = {
    "arr_at_risk": True,
    "score": False,
    "movers_7d": False,
    "movers_30d": False,
    "arr": True,
    "account_id": False,
}
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
#: Pages start at most this far in: every worker sends ``offset + page_size``
#: accounts, so deep pages cost every worker; narrow the filters instead.
MAX_OFFSET: Final = 50_000
#: The facets a list can be filtered by: query parameter -> summary field.
FILTERS: Final[dict[str, str]] = {
    "bucket": "bucket",
    "segment": "segment",
    "stage": "stage",
    "csm_owner": "csm_owner",
}
#: Facet value of accounts that have none (no segment or owner in their snapshot).
NONE_VALUE: Final = "(none)"
_RISK: Final = {"red": 2, "yellow": 1, "green": 0}


class QueryError(ValueError):
    """A query parameter that is not valid: ``parameter`` and a one-line ``detail``."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter = parameter
        self.detail = detail


def _values(params: Mapping[str, str], name: str) -> frozenset[str] | None:
    raw = params.get(name, "")
    values = frozenset(v.strip() for v in raw.split(",") if v.strip())
    return values or None


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(name, f"{raw!r} is not an integer") from None
    if not low <= value <= high:
        raise QueryError(name, f"must be between {low} and {high}")
    return value


@dataclass(frozen=True)
class AccountQuery:
    """Filters (``None`` = any), a sort and a page of ``GET /accounts``.

    Each filter is a set of accepted values (comma-separated in the query
    string); ``(none)`` matches accounts without that field. ``search`` keeps
    accounts whose id contains it, ignoring case.
    """

    bucket: frozenset[str] | None = None
    segment: frozenset[str] | None = None
    stage: frozenset[str] | None = None
    csm_owner: frozenset[str] | None = None
    search: str | None = None
    sort: str = "arr_at_risk"
    descending: bool = True
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> AccountQuery:
        """Parse query parameters; raises :class:`QueryError` for a bad one."""
        sort = params.get("sort") or "arr_at_risk"
        if sort not in SORTS:
            raise QueryError("sort", f"{sort!r} is not one of {', '.join(SORTS)}")
        order = params.get("order") or ""
        if order not in ("", "asc", "desc"):
            raise QueryError("order", f"{order!r} is not asc or desc")
        page_size = _int(params, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        page = _int(params, "page", 1, 1, MAX_OFFSET // page_size + 1)
        buckets = _values(params, "bucket")
        if buckets is not None and not buckets <= set(BUCKETS):
            unknown = ", ".join(sorted(buckets - set(BUCKETS)))
            raise QueryError("bucket", f"unknown bucket {unknown} (green, yellow, red)")
        search = (params.get("q") or "").strip().lower() or None
        return cls(
            bucket=buckets,
            segment=_values(params, "segment"),
            stage=_values(params, "stage"),
            csm_owner=_values(params, "csm_owner"),
            search=search,
            sort=sort,
            descending=SORTS[sort] if order == "" else order == "desc",
            page=page,
            page_size=page_size,
        )

    def to_params(self) -> dict[str, str]:
        """Query parameters that parse back into this query (forwarded to other workers)."""
        params: dict[str, str] = {
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "page": str(self.page),
            "page_size": str(self.page_size),
        }
        for name in FILTERS:
            values: frozenset[str] | None = getattr(self, name)
            if values is not None:
                params[name] = ",".join(sorted(values))
        if self.search is not None:
            params["q"] = self.search
        return params

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def matches(self, account: AccountSummary) -> bool:
        for name, field in FILTERS.items():
            accepted: frozenset[str] | None = getattr(self, name)
            if accepted is not None and (getattr(account, field) or NONE_VALUE) not in accepted:
                return False
        return self.search is None or self.search in account.account_id.lower()

    def sort_key(self, account: AccountSummary) -> tuple[Any, ...]:
        """Ascending key of ``account`` in this query's order (ties by account id)."""
        values: tuple[float, ...] | None
        sort = self.sort
        if sort == "arr_at_risk":
            values = (_RISK.get(account.bucket, 0), account.arr or 0.0)
        elif sort == "score":
            values = (account.score,)
        elif sort == "movers_7d":
            values = None if account.delta_7d is None else (account.delta_7d,)
        elif sort == "movers_30d":
            values = None if account.delta_30d is None else (account.delta_30d,)
        elif sort == "arr":
            values = None if account.arr is None else (account.arr,)
        else:
            values = ()
        if values is None:
            return (1, (), account.account_id)
        if self.descending and sort != "account_id":
            values = tuple(-v for v in values)
        return (0, values, account.account_id)


_FIELD_NAMES: Final = tuple(f.name for f in fields(AccountSummary))
_FIELDS: Final = frozenset(_FIELD_NAMES)


def _item(account: AccountSummary) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies, 5x slower on a deep page of 10,000.
    return {name: getattr(account, name) for name in _FIELD_NAMES}


def _summary(item: Mapping[str, Any]) -> AccountSummary:
    # Fields this version does not know (a newer worker's) are left out.
    return AccountSummary(**{k: v for k, v in item.items() if k in _FIELDS})


def _facets(accounts: Iterable[AccountSummary]) -> dict[str, dict[str, int]]:
    facets: dict[str, dict[str, int]] = {name: {} for name in FILTERS}
    for account in accounts:
        for name, field in FILTERS.items():
            value = getattr(account, field) or NONE_VALUE
            counts = facets[name]
            counts[value] = counts.get(value, 0) + 1
    return facets


def local_part(accounts: Iterable[AccountSummary], query: AccountQuery) -> dict[str, Any]:
    """One worker's part: its accounts matching ``query`` (count, portfolio
    summary, the first ``offset + page_size`` in order) and the facet counts of
    all its accounts (what the filters can choose from)."""
    everyone = list(accounts)
    matching = [a for a in everyone if query.matches(a)]
    first = heapq.nsmallest(query.offset + query.page_size, matching, key=query.sort_key)
    return {
        "total": len(matching),
        "summary": summarise(matching),
        "facets": _facets(everyone),
        "items": [_item(a) for a in first],
    }


def merge_parts(
    parts: Iterable[Mapping[str, Any]], query: AccountQuery, *, red_share_target: float
) -> dict[str, Any]:
    """The page of ``query`` from every worker's :func:`local_part`.

    ``summary`` is the portfolio (as ``GET /portfolio``) of the matching
    accounts; ``facets`` counts every account per bucket, segment, stage and
    owner.
    """
    parts = list(parts)
    total = sum(int(part["total"]) for part in parts)
    facets: dict[str, dict[str, int]] = {name: {} for name in FILTERS}
    items: list[AccountSummary] = []
    for part in parts:
        for name, counts in part["facets"].items():
            merged = facets.setdefault(name, {})
            for value, count in counts.items():
                merged[value] = merged.get(value, 0) + int(count)
        items.extend(_summary(item) for item in part["items"])
    items.sort(key=query.sort_key)
    page = items[query.offset : query.offset + query.page_size]
    return {
        "total": total,
        "page": query.page,
        "page_size": query.page_size,
        "pages": max(1, -(-total // query.page_size)),
        "sort": query.sort,
        "order": "desc" if query.descending else "asc",
        "items": [_item(a) for a in page],
        "summary": merge([part["summary"] for part in parts], red_share_target=red_share_target),
        "facets": {name: dict(sorted(counts.items())) for name, counts in facets.items()},
    }
