"""Issue 13 on a real worker: an API that says no cleanly, ids that cannot break
storage, logs that neither flood nor hold personal data.

One worker (with a token, logging at DEBUG, its history in a SQLite file the
tests write to) serves the whole module; docs/operations.md ("What the API
answers to bad requests") lists the answers checked here.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy import insert

from schemas import load_example
from schemas.dlq import HEADER_DETAIL, HEADER_REASON
from schemas.events import parse_timestamp
from service.history.db import create_engine, migrate
from service.history.models import BucketChangeRow, PlaybookTriggerRow, ScoreHistoryRow
from tests.integration.test_api import request
from tests.integration.test_ingest import read_topic
from tests.integration.workers import Namespace, WorkerProcess, wait_until

pytestmark = pytest.mark.integration

TOKEN = "hardening-" + uuid.uuid4().hex
DAY_MS = 86_400_000


@dataclass
class Served:
    worker: WorkerProcess
    namespace: Namespace
    database_url: str

    def url(self, path: str) -> str:
        return f"{self.worker.url}{path}"


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hardening")
    database_url = f"sqlite+aiosqlite:///{tmp / 'history.db'}"
    asyncio.run(migrate(database_url))
    namespace = Namespace()
    worker = WorkerProcess(
        bootstrap=kafka_bootstrap,
        namespace=namespace,
        data_dir=tmp,
        extra_env={
            "VITALS_API_TOKEN": TOKEN,
            "VITALS_DATABASE_URL": database_url,
            "VITALS_LOG_LEVEL": "DEBUG",
        },
    )
    worker.start().wait_ready()
    try:
        yield Served(worker, namespace, database_url)
    finally:
        worker.stop()


@pytest_asyncio.fixture
async def producer_to(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


def login(account_id: str, occurred_at: int | None = None, **changes: Any) -> dict[str, Any]:
    event = orjson.loads(load_example("events", "login"))
    event.update(
        account_id=account_id,
        event_id=uuid.uuid4().hex,
        occurred_at=occurred_at or int(time.time() * 1000) - 60_000,
    )
    event.update(changes)
    return dict(event)


def post(served: Served, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    kwargs.setdefault("token", TOKEN)
    return request(served.url(path), method="POST", body=raw, **kwargs)


def get(served: Served, path: str) -> tuple[int, Any]:
    return request(served.url(path))


def wait_state(served: Served, account_id: str, logins: int) -> dict[str, Any]:
    def counted() -> dict[str, Any] | None:
        status, body = get(served, f"/accounts/{account_id}/state")
        ok = status == 200 and body["counts"].get("login", 0) >= logins and body["scored_at"]
        return body if ok else None

    state: dict[str, Any] = wait_until(counted, timeout=60, what=f"{account_id} to be scored")
    return state


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65_536):
            received += chunk
    return received


def log_lines(served: Served) -> list[str]:
    return served.worker.log_path.read_text(errors="replace").splitlines()


# ------------------------------------------------------------------ item 2: log flooding


def test_malformed_requests_log_one_line_not_a_traceback_each(served: Served) -> None:
    before = len(log_lines(served))
    started = time.monotonic()
    answers = [
        raw_http(
            served.worker.web_port,
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        )
        for _ in range(300)
    ]
    took = time.monotonic() - started
    assert all(answer.startswith(b"HTTP/1.0 400") for answer in answers)
    new = log_lines(served)[before:]
    about_http = [line for line in new if "bad HTTP request" in line]
    assert not [line for line in new if "Error handling request" in line or "Traceback" in line]
    # One line per 10 s: the 300 requests took well under that.
    assert len(about_http) <= 1 + int(took // 10), about_http
    assert about_http and "BadHttpMessage (Invalid character in Content-Length)" in about_http[0]


# ------------------------------------------------------------------ item 7: smaller things


def test_the_bearer_scheme_is_case_insensitive(served: Served) -> None:
    event = login("auth-acct")
    for scheme in ("bearer", "BEARER", "Bearer"):
        raw = orjson.dumps({**event, "event_id": uuid.uuid4().hex})
        req_headers = {"Authorization": f"{scheme} {TOKEN}", "Content-Type": "application/json"}
        req = urllib.request.Request(served.url("/events"), raw, req_headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 202, scheme
    status, body = post(served, "/events", event, token="wrong")
    assert status == 401 and body["error"] == "unauthorized"


def test_ndjson_errors_name_the_line_and_an_empty_object_misses_its_type(served: Served) -> None:
    lines = [orjson.dumps(login("nd-acct")), b"", b"{not json}"]
    status, body = post(served, "/events", b"\n".join(lines), content_type="application/x-ndjson")
    assert status == 400 and body["error"] == "not_json"
    assert body["detail"].startswith("line 3 of the NDJSON body is not valid JSON")

    status, body = post(served, "/events", {})
    assert status == 400
    assert body["errors"][0]["reason"] == "missing_field"
    assert body["errors"][0]["errors"] == [
        {"field": "type", "reason": "missing_field", "message": "type is missing"}
    ]


def test_state_and_portfolio_times_are_rfc3339(served: Served) -> None:
    account = {
        **orjson.loads(load_example("events", "account")),
        "account_id": "times-acct",
        "event_id": uuid.uuid4().hex,
        "occurred_at": int(time.time() * 1000) - 60_000,
    }
    assert post(served, "/events", [account, login("times-acct")])[0] == 202
    state = wait_state(served, "times-acct", 1)
    for name in ("first_event_at", "last_event_at", "last_activity_at", "scored_at"):
        assert isinstance(state[name], str) and state[name].endswith("Z"), name
        parse_timestamp(state[name])
    for name in ("customer_since", "renewal_at"):
        assert parse_timestamp(state["snapshot"][name]) == parse_timestamp(account[name])
        assert state["snapshot"][name].endswith("Z")
    status, portfolio = get(served, "/portfolio")
    assert status == 200 and isinstance(portfolio["as_of"], str)
    assert abs(parse_timestamp(portfolio["as_of"]) - time.time() * 1000) < 60_000


async def test_debug_logs_hold_no_payloads(served: Served) -> None:
    """At DEBUG aiokafka logs every message it sends and every fetch response;
    the worker's log must hold none of the user ids, pulse reasons or authors."""
    marker = uuid.uuid4().hex[:12]
    pulse = {"rating": "red", "reason": f"reason-{marker}", "author": f"author-{marker}"}
    event = login("pii-acct", user_id=f"user-{marker}")
    assert (await asyncio.to_thread(post, served, "/accounts/pii-acct/pulse", pulse))[0] == 202
    assert (await asyncio.to_thread(post, served, "/events", event))[0] == 202
    await asyncio.to_thread(wait_state, served, "pii-acct", 1)

    log = served.worker.log_path.read_text(errors="replace")
    assert "[DEBUG]" in log and "bytes>" in log, "DEBUG is on and payload arguments were redacted"
    assert marker not in log


# ------------------------------------------------------------------ item 3: as_of


def stored_score(account_id: str, as_of: int, score: float) -> dict[str, Any]:
    from schemas.outputs import format_utc

    payload = orjson.loads(load_example("outputs", "health-score"))
    payload.update(account_id=account_id, as_of=format_utc(as_of), score=score)
    return {
        "account_id": account_id,
        "as_of": as_of,
        "score": score,
        "bucket": payload["bucket"],
        "grade": payload["grade"],
        "stage": payload["stage"],
        "scorecard_name": "default",
        "scorecard_version": "1",
        "low_confidence": False,
        "payload": payload,
    }


async def test_health_as_of_in_the_past_comes_from_the_history(served: Served) -> None:
    account = f"asof-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(post, served, "/events", login(account)))[0] == 202
    state = await asyncio.to_thread(wait_state, served, account, 1)
    scored_at = parse_timestamp(state["scored_at"])
    first, second = scored_at - 3 * DAY_MS, scored_at - 2 * DAY_MS
    engine = create_engine(served.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(ScoreHistoryRow),
                [stored_score(account, first, 61.5), stored_score(account, second, 55.0)],
            )
    finally:
        await engine.dispose()

    def health(as_of: int | None) -> tuple[int, Any, str | None]:
        query = "" if as_of is None else f"?as_of={as_of}"
        url = served.url(f"/accounts/{account}/health{query}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                source = response.headers.get("Vitals-Score-Source")
                return response.status, orjson.loads(response.read()), source
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read()), None

    status, body, source = await asyncio.to_thread(health, None)
    assert (status, source) == (200, "state") and parse_timestamp(body["as_of"]) == scored_at
    status, body, source = await asyncio.to_thread(health, scored_at + DAY_MS)
    assert (status, source) == (200, "state")
    assert parse_timestamp(body["as_of"]) == scored_at + DAY_MS, "a later instant is explained"

    # Between two stored scores: the newest at or before the instant.
    status, body, source = await asyncio.to_thread(health, second + DAY_MS // 2)
    assert (status, source) == (200, "history")
    assert parse_timestamp(body["as_of"]) == second and body["score"] == 55.0
    status, body, source = await asyncio.to_thread(health, first)
    assert (status, source) == (200, "history") and body["score"] == 61.5

    # Before anything stored: 400 naming what can be asked.
    status, body, _ = await asyncio.to_thread(health, first - 1)
    assert status == 400 and body["error"] == "as_of_out_of_range"
    assert body["scored_at"] == state["scored_at"]
    assert parse_timestamp(body["history"]["first"]) == first
    assert parse_timestamp(body["history"]["last"]) == second
    assert state["scored_at"] in body["detail"]

    status, body, _ = await asyncio.to_thread(health, -5)
    assert status == 400 and body["error"] == "invalid_parameter"


# ------------------------------------------------------------------ item 4: /history


async def test_history_parameters_are_checked_and_limit_bounds_every_list(
    served: Served,
) -> None:
    account = f"hist-{uuid.uuid4().hex[:8]}"
    base = int(time.time() * 1000) - 10 * DAY_MS
    engine = create_engine(served.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(ScoreHistoryRow),
                [stored_score(account, base + i * DAY_MS, 50.0 + i) for i in range(3)],
            )
            await conn.execute(
                insert(BucketChangeRow),
                [
                    {
                        "change_id": f"{account}-c{i}",
                        "account_id": account,
                        "from_bucket": "green",
                        "to_bucket": "yellow",
                        "score": 60.0,
                        "previous_score": 70.0,
                        "as_of": base + i * DAY_MS,
                        "drivers": [],
                    }
                    for i in range(3)
                ],
            )
            await conn.execute(
                insert(PlaybookTriggerRow),
                [
                    {
                        "trigger_id": f"{account}-t{i}",
                        "playbook": "check-in",
                        "account_id": account,
                        "reason": "test",
                        "as_of": base + i * DAY_MS,
                        "context": {},
                    }
                    for i in range(3)
                ],
            )
    finally:
        await engine.dispose()

    path = f"/accounts/{account}/history"
    for limit in ("0", "-1", "abc", "10001", "1.5"):
        status, body = await asyncio.to_thread(get, served, f"{path}?limit={limit}")
        assert status == 400 and body["error"] == "invalid_parameter", limit
        assert body["detail"] == f"limit must be an integer from 1 to 10000, got '{limit}'"
    status, body = await asyncio.to_thread(get, served, f"{path}?since=yesterday")
    assert status == 400 and body["detail"].startswith("since must be an RFC 3339 time")
    status, body = await asyncio.to_thread(get, served, f"{path}?since={base + 5}&until={base}")
    assert status == 400 and "since must be earlier than until" in body["detail"]

    status, body = await asyncio.to_thread(get, served, path)
    assert status == 200
    assert [len(body[k]) for k in ("scores", "bucket_changes", "playbook_triggers")] == [3, 3, 3]
    status, body = await asyncio.to_thread(get, served, f"{path}?limit=2")
    assert status == 200
    assert [len(body[k]) for k in ("scores", "bucket_changes", "playbook_triggers")] == [2, 2, 2]
    # The most recent ones, oldest first.
    assert [c["change_id"] for c in body["bucket_changes"]] == [f"{account}-c1", f"{account}-c2"]


# ------------------------------------------------------------------ item 5: ids and texts


def test_ids_and_texts_are_checked_on_the_http_path(served: Served) -> None:
    bad_ids = {"acme\x00": "U+0000", "ac\r\nme": "U+000D", " ": "whitespace"}
    for account_id, said in bad_ids.items():
        status, body = post(served, "/events", login(account_id))
        assert status == 400, account_id
        error = body["errors"][0]["errors"][0]
        assert (error["field"], error["reason"]) == ("account_id", "invalid_field")
        assert said in error["message"]

    status, body = post(
        served, "/accounts/pulse-acct/pulse", {"rating": "red", "reason": "r" * 1_000_000}
    )
    assert status == 400 and body["error"] == "invalid_pulse"
    assert body["detail"] == "reason: String should have at most 1000 characters"
    status, body = post(
        served,
        "/accounts/pulse-acct/pulse",
        {"rating": "red", "reason": "champion left", "expires_at": "1970-01-01T00:00:00Z"},
    )
    assert (
        status == 400 and body["detail"] == "expires_at: expires_at must not be before occurred_at"
    )
    status, body = post(served, "/accounts/pulse%00acct/pulse", {"rating": "red", "reason": "x"})
    assert status == 400 and "control characters" in body["detail"]


async def test_ids_are_checked_on_the_kafka_path(
    served: Served, producer_to: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    topic = served.namespace.topic("events.login")
    cases = {
        b"nul\x00acct": login("nul\x00acct"),
        b"crlf\r\nacct": login("crlf\r\nacct"),
        b" ": login(" "),
        b"user-acct": login("user-acct", user_id="\x1b]0;pwned\x07"),
    }
    for key, event in cases.items():
        await producer_to.send_and_wait(topic, orjson.dumps(event), key=key)

    records = await read_topic(
        kafka_bootstrap, served.namespace.topic("events.dlq"), len(cases), timeout=60
    )
    assert len(records) == len(cases)
    for record in records:
        headers = dict(record.headers)
        assert headers[HEADER_REASON] == b"invalid_field"
        detail = headers[HEADER_DETAIL].decode()
        assert detail.startswith(("account_id: ", "user_id: ")), detail
        assert "control characters" in detail or "whitespace" in detail
        assert detail.isprintable(), "the detail itself holds no control character"


# ------------------------------------------------------------------ item 6: big invalid bodies


async def test_a_big_invalid_body_gets_a_capped_answer(served: Served) -> None:
    items = [login(f"big-{i}", user_id="") for i in range(8000)]
    body = orjson.dumps(items)
    assert 900_000 < len(body) < 1_048_576

    async def one() -> tuple[int, Any, int]:
        status, answer = await asyncio.to_thread(post, served, "/events", body)
        return status, answer, len(orjson.dumps(answer))

    answers = await asyncio.gather(*(one() for _ in range(10)))
    for status, answer, size in answers:
        assert status == 400
        assert len(answer["errors"]) == 100 and answer["errors_not_listed"] == 7900
        assert [e["index"] for e in answer["errors"]] == list(range(100))
        assert "the first 100 are listed, 7900 more" in answer["detail"]
        assert size < 64 * 1024
    status, _ = await asyncio.to_thread(get, served, "/healthz")
    assert status == 200
