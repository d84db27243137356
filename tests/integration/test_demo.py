"""Issue 5 acceptance: the main job runs briefly, shows results and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.workers import Namespace, free_port

pytestmark = pytest.mark.integration


def test_demo_produces_scores_and_stops_cleanly(
    kafka_bootstrap: str, namespace: Namespace, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "demo",
            "--duration",
            "30",
            "--accounts",
            "40",
            "--rate",
            "50",
            "--bootstrap",
            kafka_bootstrap,
            "--app-id",
            namespace.app_id,
            "--topic-prefix",
            namespace.topic_prefix,
            "--data-dir",
            str(data_dir),
            "--web-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # Most personas are active from the start; an onboarding account may only
    # begin later in simulated time, after a 30-second run.
    assert summary["accounts_scored"] >= 30
    assert summary["scores"] > 0 and summary["events"] > 0
    assert summary["bucket_changes"] > 0, "the simulated personas move between buckets"
    assert sum(summary["buckets"].values()) == summary["accounts_scored"]
    assert "portfolio" in result.stderr and "latest bucket changes" in result.stderr
    children = dict(line.split() for line in (data_dir / "children.pids").read_text().splitlines())
    assert set(children) == {"worker", "history-sink", "simulator"}
    for name, pid in children.items():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)  # raises once the process is gone
        assert name
