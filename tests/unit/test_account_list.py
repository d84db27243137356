"""The account list (``GET /accounts``) and the portfolio parts it builds on, without a server."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.account_list import (
    MAX_PAGE_SIZE,
    SORTS,
    AccountQuery,
    QueryError,
    local_part,
    merge_parts,
)
from service.api.portfolio import AccountSummary, merge, summarise

OWNERS = ("csm-ana", "csm-ben", None)
SEGMENTS = ("smb", "enterprise", None)


def account(i: int, rng: random.Random) -> AccountSummary:
    return AccountSummary(
        account_id=f"acct-{i:04d}",
        bucket=rng.choice(("green", "yellow", "red")),
        score=round(rng.uniform(0, 100), 1),
        delta_7d=rng.choice((None, round(rng.uniform(-20, 20), 1))),
        arr=rng.choice((None, float(rng.randrange(0, 5)) * 1000)),  # ties on purpose
        delta_30d=rng.choice((None, round(rng.uniform(-30, 30), 1))),
        grade="C",
        segment=rng.choice(SEGMENTS),
        stage=rng.choice(("adoption", "renewal")),
        csm_owner=rng.choice(OWNERS),
    )


def portfolio(n: int, seed: int = 7) -> list[AccountSummary]:
    rng = random.Random(seed)
    return [account(i, rng) for i in range(n)]


def page_of(accounts: list[AccountSummary], query: AccountQuery, workers: int) -> dict[str, object]:
    """The merged page when ``accounts`` are spread over ``workers`` workers."""
    shares: list[list[AccountSummary]] = [[] for _ in range(workers)]
    for i, a in enumerate(accounts):
        shares[hash(a.account_id) % workers if i % 3 else i % workers].append(a)
    parts = [local_part(share, query) for share in shares]
    return merge_parts(parts, query, red_share_target=0.05)


@settings(max_examples=60, deadline=None)
@given(
    sort=st.sampled_from(sorted(SORTS)),
    order=st.sampled_from(["", "asc", "desc"]),
    page=st.integers(1, 6),
    page_size=st.integers(1, 40),
    workers=st.integers(1, 4),
    bucket=st.sampled_from(["", "red", "green,yellow"]),
    owner=st.sampled_from(["", "csm-ana", "(none)", "csm-ana,csm-ben"]),
)
def test_a_page_is_the_same_however_the_accounts_are_spread(
    sort: str, order: str, page: int, page_size: int, workers: int, bucket: str, owner: str
) -> None:
    accounts = portfolio(120)
    params = {"sort": sort, "order": order, "page": str(page), "page_size": str(page_size)}
    if bucket:
        params["bucket"] = bucket
    if owner:
        params["csm_owner"] = owner
    query = AccountQuery.from_params(params)
    one = page_of(accounts, query, 1)
    many = page_of(accounts, query, workers)
    assert many["items"] == one["items"]
    assert many["total"] == one["total"]
    assert many["summary"] == one["summary"]
    assert many["facets"] == one["facets"]
    # And it is the slice of the whole list sorted by hand.
    matching = sorted((a for a in accounts if query.matches(a)), key=query.sort_key)
    expected = matching[query.offset : query.offset + query.page_size]
    assert [i["account_id"] for i in one["items"]] == [a.account_id for a in expected]  # type: ignore[attr-defined]


def test_filters_match_fields_and_none() -> None:
    accounts = portfolio(200)
    query = AccountQuery.from_params({"csm_owner": "(none)", "segment": "smb", "bucket": "red"})
    body = merge_parts([local_part(accounts, query)], query, red_share_target=0.05)
    expected = [
        a for a in accounts if a.csm_owner is None and a.segment == "smb" and a.bucket == "red"
    ]
    assert body["total"] == len(expected) > 0
    assert body["summary"]["accounts"] == len(expected)
    assert body["summary"]["buckets"]["red"]["accounts"] == len(expected)
    # Facets count every account, not only the matching ones.
    assert sum(body["facets"]["bucket"].values()) == 200
    assert body["facets"]["csm_owner"]["(none)"] == sum(a.csm_owner is None for a in accounts)
    search = AccountQuery.from_params({"q": "ACCT-01"})
    assert {a.account_id for a in accounts if search.matches(a)} == {
        f"acct-{i:04d}" for i in range(100, 200)
    }


def test_natural_orders() -> None:
    accounts = portfolio(300)

    def first(sort: str, **extra: str) -> list[AccountSummary]:
        query = AccountQuery.from_params({"sort": sort, "page_size": "300", **extra})
        items = merge_parts([local_part(accounts, query)], query, red_share_target=0.05)["items"]
        by_id = {a.account_id: a for a in accounts}
        return [by_id[item["account_id"]] for item in items]

    risk = first("arr_at_risk")
    ranks = [{"red": 0, "yellow": 1, "green": 2}[a.bucket] for a in risk]
    assert ranks == sorted(ranks), "red first, then yellow, then green"
    reds = [a.arr or 0.0 for a in risk if a.bucket == "red"]
    assert reds == sorted(reds, reverse=True), "by ARR, largest first"
    scores = [a.score for a in first("score")]
    assert scores == sorted(scores)
    falls = first("movers_7d")
    known = [a.delta_7d for a in falls if a.delta_7d is not None]
    assert known == sorted(known) and known[0] < 0
    assert all(a.delta_7d is None for a in falls[len(known) :]), "unknown trends last"
    rises = first("movers_7d", order="desc")
    known = [a.delta_7d for a in rises if a.delta_7d is not None]
    assert known == sorted(known, reverse=True)
    assert all(a.delta_7d is None for a in rises[len(known) :]), "last in either order"
    ids = [a.account_id for a in first("account_id", order="desc")]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"sort": "mood"}, "sort"),
        ({"order": "up"}, "order"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": str(MAX_PAGE_SIZE + 1)}, "page_size"),
        ({"page": "x"}, "page"),
        ({"page": "0"}, "page"),
        ({"page": "100000", "page_size": "50"}, "page"),
        ({"bucket": "purple"}, "bucket"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(QueryError) as info:
        AccountQuery.from_params(params)
    assert info.value.parameter == parameter


def test_a_query_survives_its_round_trip_to_other_workers() -> None:
    query = AccountQuery.from_params(
        {"bucket": "red,yellow", "csm_owner": "csm-ana", "q": "Acme", "sort": "score", "page": "3"}
    )
    assert AccountQuery.from_params(query.to_params()) == query


def test_pages_past_the_end_are_empty_and_count_pages() -> None:
    accounts = portfolio(45)
    query = AccountQuery.from_params({"page": "3", "page_size": "20"})
    body = merge_parts([local_part(accounts, query)], query, red_share_target=0.05)
    assert (body["pages"], len(body["items"])) == (3, 5)
    query = AccountQuery.from_params({"page": "4", "page_size": "20"})
    body = merge_parts([local_part(accounts, query)], query, red_share_target=0.05)
    assert (body["pages"], body["items"]) == (3, [])


def test_distribution_and_30_day_movers_merge_like_one_worker() -> None:
    accounts = portfolio(150)
    whole = merge([summarise(accounts)], red_share_target=0.05)
    split = merge(
        [summarise(accounts[:40]), summarise(accounts[40:90]), summarise(accounts[90:])],
        red_share_target=0.05,
    )
    assert split == whole
    assert sum(sum(cell.values()) for cell in whole["distribution"]) == 150
    for a in accounts:
        cell = whole["distribution"][min(int(a.score // 10), 9)]
        assert cell[a.bucket] >= 1
    downs = [m["delta_30d"] for m in whole["movers_30d"]["down"]]
    assert downs == sorted(downs) and len(downs) == 10
    lowest = sorted(a.delta_30d for a in accounts if a.delta_30d is not None)[:10]
    assert downs == lowest
    # A part from a worker without the new fields still merges.
    old = {k: v for k, v in summarise(accounts[:10]).items() if k in ("buckets", "movers")}
    assert merge([old], red_share_target=0.05)["accounts"] == 10
