"""``vitals demo`` without running it: its own deployment names, its options,
what it prints (service/cli/demo.py, service/tools/demo.py)."""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

import pytest
from click.testing import CliRunner

import service.tools.demo as demo_tool
from service.cli.demo import demo
from service.tools.demo import Dashboard, DemoError, DemoOptions, port_in_use, shown


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_run(settings: Any, options: DemoOptions, out: Any = None) -> dict[str, Any]:
        seen["settings"], seen["options"] = settings, options
        return {"events": 0}

    monkeypatch.setattr(demo_tool, "run_demo", fake_run)
    return seen


def test_the_demo_is_a_deployment_of_its_own(
    captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shell set up for a real worker must not make the demo join its group.
    monkeypatch.setenv("VITALS_APP_ID", "vitals")
    monkeypatch.setenv("VITALS_TOPIC_PREFIX", "vitals.")
    result = CliRunner().invoke(demo, [], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = captured["settings"]
    assert (settings.app_id, settings.topic_prefix) == ("vitals-demo", "vitals-demo.")
    options = captured["options"]
    assert options.time_scale is None, "by default --rate decides the pace"
    assert options.invalid_rate == 0.005


def test_demo_options_pass_through(captured: dict[str, Any]) -> None:
    args = ["--app-id", "mine", "--topic-prefix", "m.", "--time-scale", "3600"]
    result = CliRunner().invoke(demo, [*args, "--invalid-rate", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (captured["settings"].app_id, captured["settings"].topic_prefix) == ("mine", "m.")
    assert captured["options"].time_scale == 3600 and captured["options"].invalid_rate == 0


def test_a_taken_web_port_is_one_line_before_anything_starts(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert port_in_use(port)
        result = CliRunner().invoke(
            demo, ["--web-port", str(port), "--data-dir", str(tmp_path / "demo")]
        )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"vitals: error: port {port} is in use (another vitals?): stop it, "
        "or choose another port with --web-port"
    )
    assert not (tmp_path / "demo" / "children.pids").exists()


def test_demo_error_is_a_runtime_error() -> None:
    assert issubclass(DemoError, RuntimeError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acct-00017", "acct-00017"),
        ("acct\x1b[2J", "acct\\x1b[2J"),
        ("a\nb\rc\x00", "a\\nb\\rc\\x00"),
        ("evil\u202eexe", "evil\\u202eexe"),
        ("café", "café"),
    ],
)
def test_shown_escapes_what_could_drive_a_terminal(raw: str, expected: str) -> None:
    assert shown(raw) == expected
    assert shown(raw).isprintable()


def test_shown_cuts_long_text() -> None:
    assert shown("x" * 50, 10) == "x" * 9 + "…"


def test_the_dashboard_escapes_ids_and_reasons() -> None:
    board = Dashboard()
    board.changes = deque(
        [
            {
                "account_id": "acct\x1b]0;owned\x07",
                "from_bucket": "green",
                "to_bucket": "red",
                "score": 30.0,
                "drivers": [{"metric": "m\x1b[31m", "contribution_delta": -5.0}],
            }
        ]
    )
    board.triggers = deque(
        [{"account_id": "a\r\nb", "playbook": "escalation", "reason": "why\x1b[2J"}]
    )
    text = board.render(tty=False)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "acct\\x1b]0;owned\\x07" in text and "why\\x1b[2J" in text


def test_a_taken_kafka_port_without_a_broker_is_one_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITALS_BOOTSTRAP_SERVERS", raising=False)
    with socket.socket() as web, socket.socket() as taken:
        web.bind(("127.0.0.1", 0))
        web_port = web.getsockname()[1]
        web.close()  # free: only the Kafka port is taken
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)  # accepts connections, answers nothing: not a broker
        port = taken.getsockname()[1]
        args = ["--kafka-port", str(port), "--web-port", str(web_port)]
        result = CliRunner().invoke(demo, [*args, "--data-dir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"vitals: error: port {port} is in use but no Kafka broker answers at "
        f"127.0.0.1:{port}: choose another with --kafka-port"
    )
