"""The pure parts of ``vitals bench``: percentiles, rates, targets, the result table."""

from __future__ import annotations

import cProfile
import json
import math
from pathlib import Path

import pytest

from service.tools.bench import (
    SCHEMA,
    TARGETS,
    BenchParams,
    evaluate_targets,
    history_days,
    latency_summary,
    machine_info,
    percentile,
    prometheus_sum,
    rate,
    render_table,
    score_latencies,
    size_summary,
    summarise_profile,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 99) == pytest.approx(39.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_rate() -> None:
    assert rate(1000, 2.0) == 500.0
    assert rate(10, 0.0) is None
    assert rate(10, -1.0) is None
    assert rate(10, math.inf) is None


def test_latency_summary() -> None:
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_ms"] == 50.5
    assert summary["p99_ms"] == 99.0
    assert summary["max_ms"] == 100.0
    assert latency_summary([])["p99_ms"] is None


def test_size_summary() -> None:
    assert size_summary([100, 300])["mean"] == 200.0
    assert size_summary([100, 300])["max"] == 300
    assert size_summary([])["max"] is None


def test_prometheus_sum_adds_every_label_set() -> None:
    text = "\n".join(
        [
            "# HELP vitals_events_consumed_total Input messages consumed.",
            "# TYPE vitals_events_consumed_total counter",
            'vitals_events_consumed_total{outcome="applied",topic="a"} 1500.0',
            'vitals_events_consumed_total{outcome="duplicate",topic="b"} 2.0',
            'vitals_events_consumed_created{outcome="applied",topic="a"} 1.7e9',
            "vitals_score_updates_total 1502.0",
        ]
    )
    assert prometheus_sum(text, "vitals_events_consumed_total") == 1502.0
    assert prometheus_sum(text, "vitals_score_updates_total") == 1502.0
    assert prometheus_sum(text, "vitals_missing_total") == 0.0


def test_history_days_holds_enough_events() -> None:
    assert history_days(1_000_000, 10_000) >= 30
    assert history_days(10, 10_000) == 2
    assert history_days(10**9, 1) == 365
    with pytest.raises(ValueError):
        history_days(0, 1)


def _result(**overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "schema": SCHEMA,
        "started_at": "2025-01-01T00:00:00+00:00",
        "machine": machine_info("4.4.0"),
        "parameters": BenchParams(events=1000, accounts=10).to_json(),
        "limit": {"events": 1000, "seconds": 0.01, "events_per_s": 100_000},
        "end_to_end": {"events_per_s": 60_000, "share_of_limit": 0.6, "seconds": 1.0},
        "latency": {
            "runs": [
                {
                    "offered_rate": 5000.0,
                    "achieved_rate": 4990,
                    "sustained": True,
                    "unscored": 0,
                    "p50_ms": 20.0,
                    "p99_ms": 120.0,
                    "max_ms": 300.0,
                }
            ]
        },
        "state": {
            "busy_bytes": size_summary([3000]),
            "idle_bytes": size_summary([1500]),
            "rss_done_kb": 250 * 1024,
        },
        "quix": {"status": "not installed: No module named 'quixstreams'"},
        "profile": None,
    }
    result.update(overrides)
    return result


def _verdicts(result: dict[str, object]) -> dict[str, bool | None]:
    return {check["name"]: check["pass"] for check in evaluate_targets(result)}


def test_targets_all_pass() -> None:
    verdicts = _verdicts(_result())
    assert set(verdicts) == set(TARGETS)
    assert all(verdicts.values())


def test_targets_fail_and_unmeasured() -> None:
    slow = _result(
        end_to_end={"events_per_s": 2_000, "share_of_limit": 0.02},
        state={"idle_bytes": size_summary([1000, 2049]), "rss_done_kb": 301 * 1024},
        latency={"runs": []},
    )
    verdicts = _verdicts(slow)
    assert verdicts["worker_rss_mb_at_end"] is False
    assert verdicts["end_to_end_events_per_s"] is False
    assert verdicts["end_to_end_share_of_limit"] is False
    assert verdicts["idle_state_bytes"] is False
    assert verdicts["latency_p99_ms_at_5k"] is None


def test_latency_target_needs_5k_sustained_and_everything_scored() -> None:
    run = {"offered_rate": 5000.0, "sustained": False, "unscored": 0, "p99_ms": 100.0}
    assert _verdicts(_result(latency={"runs": [run]}))["latency_p99_ms_at_5k"] is False
    run = {"offered_rate": 500.0, "sustained": True, "unscored": 0, "p99_ms": 100.0}
    assert _verdicts(_result(latency={"runs": [run]}))["latency_p99_ms_at_5k"] is False
    run = {"offered_rate": 5000.0, "sustained": True, "unscored": 3, "p99_ms": 100.0}
    assert _verdicts(_result(latency={"runs": [run]}))["latency_p99_ms_at_5k"] is False
    run = {"offered_rate": 5000.0, "sustained": True, "unscored": 0, "p99_ms": 251.0}
    assert _verdicts(_result(latency={"runs": [run]}))["latency_p99_ms_at_5k"] is False


def test_result_is_json_and_renders() -> None:
    result = _result()
    result["targets"] = evaluate_targets(result)
    text = json.dumps(result)
    assert json.loads(text)["schema"] == SCHEMA
    table = render_table(result)
    assert "(a) limit" in table
    assert "100,000 ev/s" in table
    assert "not installed" in table
    assert table.count("[PASS]") == len(TARGETS)


def test_table_survives_missing_sections() -> None:
    table = render_table({"targets": []})
    assert "(b) vitals end to end" in table


def test_machine_info_fields() -> None:
    info = machine_info(None)
    for key in ("cpu_model", "cpu_cores", "memory_mb", "python", "kafka_version", "faust_version"):
        assert key in info
    assert info["kafka_version"] == "unknown"


def test_params_json_has_paths_as_strings() -> None:
    data = BenchParams(events=100, accounts=10, profile=Path("x.prof")).to_json()
    assert data["profile"] == "x.prof"
    assert data["output"] == "docs/bench/latest.json"
    json.dumps(data)


def test_summarise_profile(tmp_path: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    sum(percentile([1.0, 2.0, 3.0], 50) for _ in range(100))
    profiler.disable()
    path = tmp_path / "p.prof"
    profiler.dump_stats(path)
    summary = summarise_profile(path, top=5)
    assert len(summary["by_cumulative"]) <= 5
    assert any("percentile" in row["function"] for row in summary["by_cumulative"])
    assert {"function", "ncalls", "tottime_s", "cumtime_s"} <= set(summary["by_self"][0])


def test_score_latency_is_the_first_score_reflecting_the_event() -> None:
    sent = [("a", 100), ("a", 150), ("b", 10), ("c", 5)]
    published = {
        # The score of as_of 150 was published first (coalesced batch), then 200.
        "a": [(200, 400), (150, 300)],
        "b": [(5, 50)],  # older than the event: does not reflect it
    }
    latencies, unscored = score_latencies(sent, published)
    assert latencies == [200.0, 150.0]
    assert unscored == 2


# ----------------------------------------------------------------- (f) the machine rate


def test_table_shows_the_machine_rate_beside_one_process() -> None:
    machine_rate = {
        "processes": 2,
        "events_per_s": 110_000,
        "events_per_s_from_ready": 100_000,
        "speedup_over_one_process": 1.83,
        "worker_cpu_ms_per_event": 0.018,
        "cpu_seconds_workers": 18.0,
        "cpu_seconds_broker": 2.5,
        "cpu_wall_seconds": 9.5,
    }
    table = render_table(_result(machine_rate=machine_rate))
    lines = table.splitlines()
    one = next(i for i, ln in enumerate(lines) if ln.startswith("(b) vitals end to end"))
    machine = next(i for i, ln in enumerate(lines) if ln.startswith("(f) machine: 2 processes"))
    assert one < machine < one + 12, "the machine rate sits beside the one-process rate"
    assert "110,000 ev/s" in lines[machine]
    assert any("speed-up over one process" in ln and "1.83" in ln for ln in lines)
    assert any("18.0/2.5 of 9.5 s" in ln for ln in lines)


def test_table_says_why_the_machine_rate_was_not_measured() -> None:
    skipped = {"processes": 1, "status": "skipped: one process per machine"}
    assert "(f) machine: skipped: one process per machine" in render_table(
        _result(machine_rate=skipped)
    )
    assert "(f) machine" not in render_table(_result())


def test_machine_processes_is_one_per_core_within_the_partitions() -> None:
    from service.tools.bench import BenchError, machine_processes
    from service.tools.worker_pool import machine_cores

    assert machine_processes(BenchParams(processes=0, partitions=4)) == min(machine_cores(), 4)
    assert machine_processes(BenchParams(processes=1)) == 1
    assert machine_processes(BenchParams(processes=3, partitions=4)) == 3
    with pytest.raises(BenchError, match=r"more than the 4 partitions \(--partitions\)"):
        machine_processes(BenchParams(processes=5, partitions=4))


def test_the_in_process_pipeline_measures_every_stage() -> None:
    from service.tools.bench_pipeline import STAGES, measure, render

    result = measure(accounts=20, days=10, seed=3, commit_every=200)
    assert result.events > 300
    assert set(result.us_per_event) == set(STAGES)
    assert all(value >= 0 for value in result.us_per_event.values())
    assert result.us_per_event["rescore"] > 0 and result.us_per_event["decode"] > 0
    assert 0 < result.shares["rescored_steps"] <= 1
    table = render(result)
    assert all(stage in table for stage in STAGES) and "events/s" in table
