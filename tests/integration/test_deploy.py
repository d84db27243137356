"""Deployment artefacts: Prometheus config and alert rules, the Grafana dashboard,
docker-compose.yml and the Dockerfile; and a real Prometheus scraping a real worker.

The promtool and Prometheus tests need the Debian ``prometheus`` package
(``deploy/ci/install-test-tools.sh`` installs it) and skip, saying so, without
it. docker-compose.yml and the Dockerfile cannot be run here (no Docker
engine): they are checked for structure and for consistency with the other
files they name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client.metrics import MetricWrapperBase

from schemas import load_example
from service.runtime import metrics
from service.runtime.metrics import LoopHistogram
from service.tools.kafka_local import DEFAULT_KAFKA_VERSION
from tests.integration.workers import Namespace, free_port, http_get, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "vitals.json"
DATASOURCE_YML = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_YML = GRAFANA_DIR / "provisioning" / "dashboards" / "vitals.yml"
COMPOSE_YML = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INSTALLER = REPO / "deploy" / "ci" / "install-test-tools.sh"

INSTALL_HINT = "run deploy/ci/install-test-tools.sh as root (Debian package 'prometheus')"

#: The alerts of the deployment issue.
ALERTS = {
    "VitalsConsumerLagHigh",
    "VitalsDeadLetterRateHigh",
    "VitalsRedShareHigh",
    "VitalsWorkerDown",
    "VitalsPlaybookWebhookFailing",
}
SEVERITIES = {"critical", "warning", "info"}
#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
WORKERS = ("worker-1", "worker-2")
COMPOSE_SERVICES = {
    "kafka",
    "postgres",
    *WORKERS,
    "history-sink",
    "simulator",
    "prometheus",
    "grafana",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL_HINT}")
    return path


def needs(name: str) -> pytest.MarkDecorator:
    """Skip (before any fixture starts a broker) when the tool is missing."""
    return pytest.mark.skipif(
        shutil.which(name) is None, reason=f"{name} is not installed: {INSTALL_HINT}"
    )


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


# ------------------------------------------------------------------ metric names


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every sample name vitals exports -> the label names it may carry.

    Built from the families of ``service.runtime.metrics.REGISTRY``: a counter is
    exposed as ``<name>_total``, a histogram as ``<name>_bucket`` (with ``le``),
    ``_sum`` and ``_count``, a gauge under its own name.
    """
    declared = {
        obj._name: frozenset(obj._labelnames)
        for obj in vars(metrics).values()
        if isinstance(obj, MetricWrapperBase)
    }
    # The worker's lock-free histograms: registered collectors without labels.
    declared.update(
        {obj.name: frozenset() for obj in vars(metrics).values() if isinstance(obj, LoopHistogram)}
    )
    exported: dict[str, frozenset[str]] = {}
    for family in metrics.REGISTRY.collect():
        labels = declared[family.name] | TARGET_LABELS
        if family.type == "counter":
            exported[f"{family.name}_total"] = labels
        elif family.type == "gauge":
            exported[family.name] = labels
        elif family.type == "histogram":
            exported[f"{family.name}_bucket"] = labels | {"le"}
            exported[f"{family.name}_sum"] = labels
            exported[f"{family.name}_count"] = labels
        else:  # pragma: no cover - a new kind of metric needs a rule here
            raise AssertionError(f"{family.name}: unhandled metric type {family.type}")
    return exported


_METRIC = re.compile(r"\b(vitals_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_promql(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """Problems of one PromQL expression: unknown vitals metrics or labels."""
    problems = []
    allowed = set(TARGET_LABELS)
    for name, selector in _METRIC.findall(expr):
        if name not in exported:
            problems.append(f"{name} is not exported by service/runtime/metrics.py")
            continue
        allowed |= exported[name]
        for label in _MATCHER_LABEL.findall(selector or ""):
            if label not in exported[name]:
                problems.append(f"{name} has no label {label!r}")
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in allowed:
                problems.append(f"grouping by {label!r}, a label none of its metrics has")
    return problems


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD_JSON.read_text("utf-8"))
    return [
        target["expr"]
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS_YML)["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for Prometheus."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
    )


def test_metric_name_check_sees_the_registry() -> None:
    exported = exported_metrics()
    assert exported["vitals_events_consumed_total"] >= {"topic", "outcome"}
    assert "le" in exported["vitals_processing_seconds_bucket"]
    assert "vitals_accounts_tracked" in exported
    assert "vitals_events_consumed" not in exported  # counters only as _total
    assert check_promql("rate(vitals_no_such_metric_total[5m])", exported)
    assert check_promql('sum(vitals_consumer_lag{bucket="red"})', exported)
    assert check_promql("sum by (reason) (vitals_consumer_lag)", exported)
    assert not check_promql(
        "histogram_quantile(0.9, sum by (le) (rate(vitals_processing_seconds_bucket[5m])))",
        exported,
    )


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = {f"dashboard: {expr}": expr for expr in dashboard_exprs()}
    exprs |= {f"alert {rule['alert']}: {rule['expr']}": rule["expr"] for rule in alert_rules()}
    problems = [
        f"{where}: {problem}"
        for where, expr in exprs.items()
        for problem in check_promql(expr, exported)
    ]
    assert not problems, "\n".join(problems)
    used = {name for expr in exprs.values() for name, _ in _METRIC.findall(expr)}
    assert len(used) >= 10, used


# ------------------------------------------------------------------ promtool


@needs("promtool")
def test_promtool_check_config() -> None:
    promtool = tool("promtool")
    # Rule files are resolved relative to the config file, from any directory.
    result = run(promtool, "check", "config", str(PROMETHEUS_YML), cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs("promtool")
def test_promtool_check_rules() -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "rules", str(ALERTS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout + result.stderr


@needs("promtool")
def test_promtool_test_rules() -> None:
    promtool = tool("promtool")
    result = run(promtool, "test", "rules", str(ALERTS_TEST_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_documented_and_tested_firing_and_not_firing() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, name
    assert rules["VitalsWorkerDown"]["expr"] == 'up{job="vitals"} == 0'
    assert rules["VitalsWorkerDown"]["for"] == "1m"
    assert rules["VitalsRedShareHigh"]["for"] == "15m"
    assert rules["VitalsConsumerLagHigh"]["for"] == "5m"

    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST_YML)["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == ALERTS, f"no firing test for {ALERTS - fired}"
    assert quiet == ALERTS, f"no not-firing test for {ALERTS - quiet}"
    operations = (REPO / "docs" / "operations.md").read_text("utf-8")
    for name in ALERTS:
        assert name in operations, f"{name} is not explained in docs/operations.md"


def test_prometheus_config_scrapes_both_compose_workers() -> None:
    config = load_yaml(PROMETHEUS_YML)
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "vitals"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"{worker}:6066" for worker in WORKERS]


# ------------------------------------------------------------------ Grafana


def test_dashboard_parses_and_covers_the_pipeline() -> None:
    dashboard = json.loads(DASHBOARD_JSON.read_text("utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource_uid = load_yaml(DATASOURCE_YML)["datasources"][0]["uid"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid, panel["title"]
    exprs = "\n".join(dashboard_exprs())
    for needed in [
        r"sum by \(topic, outcome\) \(rate\(vitals_events_consumed_total",
        r"vitals_consumer_lag",
        r"sum by \(reason\) \(rate\(vitals_dlq_records_total",
        r"sum by \(bucket\) \(vitals_accounts_by_bucket",
        r"vitals_bucket_transitions_total",
        r"vitals_playbook_triggers_total",
        r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(vitals_processing_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(vitals_processing_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(vitals_score_latency_seconds_bucket",
    ]:
        assert re.search(needed, exprs), f"no panel queries {needed}"


def test_grafana_provisioning_matches_compose() -> None:
    datasource = load_yaml(DATASOURCE_YML)["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    scrape_interval = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval
    (provider,) = load_yaml(DASHBOARD_PROVIDER_YML)["providers"]
    grafana = load_yaml(COMPOSE_YML)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------ docker-compose.yml


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def test_compose_services_and_worker_settings() -> None:
    compose = load_yaml(COMPOSE_YML)
    services = compose["services"]
    assert set(services) >= COMPOSE_SERVICES

    envs = [environment(services[name]) for name in WORKERS]
    assert len({env["VITALS_APP_ID"] for env in envs}) == 1, "workers must share the group"
    published = []
    for name, env in zip(WORKERS, envs, strict=True):
        worker = services[name]
        assert worker["command"] == ["worker"]
        assert "build" in worker
        assert env["VITALS_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["VITALS_WEB_BIND"] == "0.0.0.0", "listen on the container's interfaces"
        assert env["VITALS_WEB_HOST"] == name, "announce a name the other worker can reach"
        assert env["VITALS_PARTITIONS"] == "8"
        assert env["VITALS_DATABASE_URL"] == (
            "postgresql+asyncpg://vitals:vitals@postgres:5432/vitals"
        )
        port = env.get("VITALS_WEB_PORT", "6066")
        (mapping,) = worker["ports"]
        host_port, container_port = str(mapping).split(":")
        assert container_port == port
        published.append(host_port)
        assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
        assert {"kafka", "postgres"} <= set(worker["depends_on"])
    assert published == ["6066", "6067"]

    sink = services["history-sink"]
    assert sink["command"] == ["history-sink"]
    assert environment(sink)["VITALS_DATABASE_URL"] == envs[0]["VITALS_DATABASE_URL"]
    assert environment(sink)["VITALS_APP_ID"] == envs[0]["VITALS_APP_ID"]

    simulator = services["simulator"]
    assert simulator["command"][:1] == ["simulate"]
    assert " ".join(simulator["command"]) == "simulate --mode live --rate 200 --accounts 500"
    assert environment(simulator)["VITALS_BOOTSTRAP_SERVERS"] == "kafka:9092"

    kafka = environment(services["kafka"])
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}

    postgres = environment(services["postgres"])
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        "vitals",
        "vitals",
        "vitals",
    )

    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


_PINNED_TAG = re.compile(r"^v?\d+(\.\d+)+(-[A-Za-z0-9.]+)?$")


def test_compose_images_are_pinned() -> None:
    services = load_yaml(COMPOSE_YML)["services"]
    for name, service in services.items():
        if "build" in service:
            continue  # built here from the Dockerfile (its base image is checked below)
        image, _, tag = service["image"].rpartition(":")
        assert image and _PINNED_TAG.match(tag), f"{name}: image {service['image']} not pinned"
    kafka_image, _, kafka_tag = services["kafka"]["image"].partition(":")
    assert kafka_image == "apache/kafka"
    # The same broker release as the test suite's local broker.
    assert kafka_tag == DEFAULT_KAFKA_VERSION and kafka_tag.startswith("4.")
    assert services["postgres"]["image"].startswith("postgres:16.")


def test_compose_bind_mounts_exist() -> None:
    services = load_yaml(COMPOSE_YML)["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text("utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_image_contract() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", resolved), resolved
    last = {keyword: rest for keyword, rest in instructions}
    assert json.loads(last["ENTRYPOINT"]) == ["vitals"]
    assert json.loads(last["CMD"]) == ["worker"]
    assert last["EXPOSE"] == "6066"
    assert last["USER"].split(":")[0] not in {"0", "root"}

    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: missing"
                assert source.rstrip("/") not in ignored, f"COPY {source}: in .dockerignore"


def test_installer_is_valid_bash() -> None:
    result = run("bash", "-n", str(INSTALLER))
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ a real Prometheus


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        self.check_alive()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", (path, params, payload)
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The value of a one-series instant query, None while it has no result."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.process.returncode}:\n"
                + self.log_path.read_text(errors="replace")[-3000:]
            )


@contextlib.contextmanager
def running_prometheus(binary: str, directory: Path, target: str) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``target`` every second as job ``vitals``, with alerts.yml."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_YML)],
        "scrape_configs": [{"job_name": "vitals", "static_configs": [{"targets": [target]}]}],
    }
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        server.check_alive()
        return http_get(f"{server.url}/-/ready")[0] == 200

    try:
        wait_until(ready, timeout=60, what="prometheus to be ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@needs("prometheus")
async def test_real_prometheus_scrapes_a_worker(
    namespace: Namespace, worker_factory: Any, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    binary = tool("prometheus")
    worker = worker_factory(namespace)
    await asyncio.to_thread(worker.wait_ready)

    login_topic = namespace.topic("events.login")
    event = {
        **orjson.loads(load_example("events", "login")),
        "event_id": f"deploy-{uuid.uuid4().hex}",
        "occurred_at": int(time.time() * 1000),
    }
    await producer.send_and_wait(login_topic, orjson.dumps(event), key=event["account_id"].encode())

    def scenario() -> None:
        with running_prometheus(binary, tmp_path, f"127.0.0.1:{worker.web_port}") as prom:
            wait_until(
                lambda: prom.value('up{job="vitals"}') == 1.0,
                timeout=60,
                what="prometheus to scrape the worker (up == 1)",
            )
            consumed = f'sum(vitals_events_consumed_total{{job="vitals", topic="{login_topic}"}})'
            wait_until(
                lambda: (prom.value(consumed) or 0) >= 1,
                timeout=60,
                what=f"{consumed} >= 1 in prometheus",
            )
            wait_until(
                lambda: (prom.value('vitals_accounts_tracked{job="vitals"}') or 0) >= 1,
                timeout=30,
                what="vitals_accounts_tracked >= 1 in prometheus",
            )

            # Every dashboard query is valid PromQL for a real server.
            for expr in dashboard_exprs():
                prom.api("query", query=grafana_to_promql(expr))

            # alerts.yml loads and evaluates cleanly against real series.
            def rules_healthy() -> bool:
                groups = prom.api("rules")["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                assert {rule["name"] for rule in rules} == ALERTS
                for rule in rules:
                    assert rule["health"] in ("ok", "unknown"), rule
                return all(rule["health"] == "ok" for rule in rules)

            wait_until(rules_healthy, timeout=30, what="every alert rule evaluated")
            assert prom.query('ALERTS{alertname="VitalsWorkerDown"}') == []

            # A worker that stops: up drops to 0 and VitalsWorkerDown goes pending.
            worker.stop()
            wait_until(
                lambda: prom.value('up{job="vitals"}') == 0.0,
                timeout=30,
                what="up == 0 after the worker stopped",
            )
            wait_until(
                lambda: prom.query('ALERTS{alertname="VitalsWorkerDown", alertstate="pending"}'),
                timeout=30,
                what="VitalsWorkerDown to be pending",
            )

    await asyncio.to_thread(scenario)
