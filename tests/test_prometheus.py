"""The alert rules, the Grafana dashboard and the compose profile that serve them, tested
with the real Prometheus and promtool (scripts/services installs Debian's ``prometheus``).

The last test runs the real worker, the real ``pubtasks metrics`` and a real Prometheus
scraping it every second; with ``PUBTASKS_DASHBOARD_DATA`` set it also writes what the
dashboard's graphs showed there (scripts/dashboard-picture draws docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pubtasks.bench.waiting import wait_for
from pubtasks.metrics import families
from pubtasks.stats import Stats
from tests.helpers import Worker, finish, write_config
from tests.support.nodes import free_port
from tests.test_metrics import NOW, SCHEDULE, reading

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pubtasks.json"
COMPOSE = ROOT / "docker-compose.yml"
#: What Grafana puts in place of the dashboard's variables, as it would for "All" entries
#: and a 1 s scrape interval.
VARIABLES = {"$__rate_interval": "5s", "$entry": ".+"}
#: The alerts the issue asks for, by name.
REQUIRED = {
    "PubtasksNoConfirm",
    "PubtasksFailed",
    "PubtasksUnconfirmedRising",
    "PubtasksNacked",
    "PubtasksReturned",
    "PubtasksPendingPastConfirmTimeout",
    "PubtasksNoBeatHolder",
    "PubtasksMetricsDown",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Not skipped when missing: a check that quietly does not run passes a broken file.
    assert shutil.which("promtool"), "promtool is missing: run scripts/services"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, timeout=60
    )


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[tuple[str, dict[str, Any], str]]:
    """(panel title, target, expression as Grafana sends it) of every dashboard target."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], target, expr))
    return out


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


# -- the alert rules ------------------------------------------------------------------


def test_promtool_checks_the_alert_rules() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_alert_fires_on_a_bad_series_and_stays_silent_on_a_healthy_one() -> None:
    out = promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {r["alert"] for r in rules()}


def test_every_alert_asked_for_is_there_and_says_what_to_check_first() -> None:
    assert {r["alert"] for r in rules()} >= REQUIRED
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert "Check first" in rule["annotations"]["summary"], rule["alert"]


def test_the_compose_prometheus_config_loads_the_rules_and_scrapes_job_pubtasks() -> None:
    out = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "pubtasks"  # as PubtasksMetricsDown expects
    assert job["static_configs"] == [{"targets": ["metrics:9808"]}]


# -- the dashboard ----------------------------------------------------------------------


def test_the_dashboard_follows_grafanas_dashboard_model() -> None:
    # What Grafana's dashboard schema (schemaVersion 39) requires of what we use of it
    d = dashboard()
    assert d["uid"] == "pubtasks" and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["entry"]["datasource"] == source
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in d["panels"]:
        title = panel["title"]
        assert isinstance(panel["id"], int) and panel["id"] not in ids, title
        ids.add(panel["id"])
        assert panel["type"] in ("stat", "timeseries", "table"), title
        assert panel["datasource"] == source, title
        assert panel["description"], title
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24, title
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{title} overlaps another panel"
        cells |= covered
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), title
        for target in panel["targets"]:
            assert target["datasource"] == source, title
            assert target["expr"].strip(), title


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(e for _, _, e in queries())
    for name in (
        "pubtasks_acked_total",
        "pubtasks_nacked_total",
        "pubtasks_returned_total",
        "pubtasks_tick_confirm_latency_seconds_bucket",
        "pubtasks_pending",
        "pubtasks_oldest_pending_age_seconds",
        "pubtasks_failed_total",
        "pubtasks_last_error_timestamp_seconds",
        "pubtasks_beat_holder_info",
        "pubtasks_healthy",
    ):
        assert name in exprs, name
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_every_dashboard_expression_parses_in_prometheus(tmp_path: Path) -> None:
    # promtool parses each expression as a recording rule's, as Prometheus would
    recorded = [
        {"record": f"pubtasks_panel_{n}", "expr": expr} for n, (_, _, expr) in enumerate(queries())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": recorded}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def served() -> set[str]:
    """The metric names ``pubtasks metrics`` serves, as Prometheus stores them."""
    names = set()
    for family in families(reading(), SCHEDULE, NOW):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def test_every_metric_the_rules_and_dashboard_name_is_served_and_documented() -> None:
    named = set(re.findall(r"pubtasks_[a-z_]+", " ".join(e for _, _, e in queries())))
    named |= set(re.findall(r"pubtasks_[a-z_]+", " ".join(r["expr"] for r in rules())))
    assert named <= served(), named - served()
    documented = (ROOT / "docs" / "operations.md").read_text()
    for family in families(reading(), SCHEDULE, NOW):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in documented, f"docs/operations.md does not document {name}"


def test_compose_observability_profile_provisions_prometheus_and_grafana() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("metrics", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
    assert services["metrics"]["command"] == [
        "pubtasks", "metrics", "--address", "0.0.0.0", "--port", "9808",
    ]  # fmt: skip
    assert services["metrics"]["environment"] == {
        k: v for k, v in services["worker"]["environment"].items() if k != "AMQP_URL"
    }
    mounts = " ".join(services["prometheus"]["volumes"])
    assert f"./deploy/prometheus/{ALERTS.name}:/etc/prometheus/{ALERTS.name}" in mounts
    grafana = ROOT / "deploy" / "grafana" / "provisioning"
    [source] = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    [provider] = yaml.safe_load((grafana / "dashboards" / "pubtasks.yml").read_text())["providers"]
    dashboards = provider["options"]["path"]
    assert f"./deploy/grafana/pubtasks.json:{dashboards}/pubtasks.json:ro" in " ".join(
        services["grafana"]["volumes"]
    )
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--profile", "observability", "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


# -- a real Prometheus scraping the real worker -------------------------------------------

ENTRIES = """
beat_schedule = {
    "text": {"task": "pubtasks.publish", "schedule": every()},
    # no queue is bound for this routing key: returned, counted, the last error
    "unroutable": {
        "task": "pubtasks.publish",
        "schedule": every(1),
        "kwargs": {"routing_key": "nobody.listens", "on_return": "count"},
    },
}
"""


class Prometheus:
    """A real Prometheus on a port of its own, keeping its data in a temporary directory."""

    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "pubtasks", "static_configs": [{"targets": [target]}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def exporter(worker_dir: Path, worker_env: dict[str, str], prefix: str) -> Iterator[str]:
    """The real ``pubtasks metrics``, where the worker runs, with its config; its host:port.

    The config is written first: the exporter reads it once (its entries' intervals),
    and one that read the fixture's default config served no interval for ``text``,
    so PubtasksNoConfirm could not fire (seen once on a loaded CI)."""
    write_config(worker_dir, prefix, ENTRIES)
    port = free_port()
    cmd = [sys.executable, "-m", "pubtasks", "metrics", "--address", "127.0.0.1"]
    process = subprocess.Popen(
        [*cmd, "--port", str(port), "--prefix", prefix],
        cwd=worker_dir,
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def prometheus(tmp_path: Path, exporter: str) -> Iterator[Prometheus]:
    assert shutil.which("prometheus"), "prometheus is missing: run scripts/services"
    (tmp_path / "prometheus").mkdir()
    p = Prometheus(tmp_path / "prometheus", exporter)
    try:
        wait_for(p.ready, 60, "Prometheus to be ready", 0.2)
        yield p
    finally:
        p.stop()


def legend(target: dict[str, Any], labels: dict[str, str]) -> str:
    text = target["legendFormat"] or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), text)


@pytest.mark.integration
@pytest.mark.e2e
def test_a_real_prometheus_scrapes_the_worker_answers_every_panel_and_alerts(
    worker: Worker,
    worker_dir: Path,
    worker_env: dict[str, str],
    stats: Stats,
    prometheus: Prometheus,
) -> None:
    # Given the real worker, an entry publishing every 0.2 s and one publishing to no queue
    # (ENTRIES, written by the exporter fixture), scraped every second by a real
    # Prometheus for about 30 s
    worker.start()
    started = time.time()

    def scraped(query: str) -> float:
        result = prometheus.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def scrapes() -> float:
        return scraped('count_over_time(pubtasks_acked_total{entry="text"}[1m])')

    wait_for(lambda: scrapes() >= 10, 120, "10 scrapes of the running worker", 0.5)
    trigger = [sys.executable, "-m", "pubtasks", "schedule", "trigger", "text"]
    subprocess.run(trigger, cwd=worker_dir, env=worker_env, check=True, timeout=30)
    wait_for(
        lambda: scrapes() >= 30,
        120,
        "30 scrapes of the running worker",
        0.5,
    )
    # Then every expression of every panel returns data, as Grafana would ask for it
    empty = [
        (title, expr)
        for title, _, expr in queries()
        if not prometheus.api("query", query=expr)["result"]
    ]
    assert not empty, empty
    drawn: dict[str, list[dict[str, Any]]] = {}
    for title, target, expr in queries():
        if target.get("instant"):
            continue
        answer = prometheus.api("query_range", query=expr, start=started, end=time.time(), step=1)
        drawn.setdefault(title, []).extend(
            {"legend": legend(target, series["metric"]), "values": series["values"]}
            for series in answer["result"]
        )
    firing = prometheus.api("alerts")["alerts"]
    assert {(a["labels"]["alertname"], a["labels"].get("entry")) for a in firing} >= {
        ("PubtasksReturned", "unroutable")
    }, firing
    # and the healthy entry was never pending on any alert, over the whole run
    ever = prometheus.api("query", query='max_over_time(ALERTS{entry="text"}[5m])')["result"]
    assert not ever, ever

    # When the worker stops, the entry's confirms stop
    assert worker.stop() == 0, worker.log[-3000:]
    finish(worker_dir, worker_env, stats)

    # Then the no-confirm alert goes pending (it fires a minute later)
    def no_confirm() -> bool:
        return any(
            a["labels"]["alertname"] == "PubtasksNoConfirm"
            and a["labels"].get("entry") == "text"
            and a["state"] in ("pending", "firing")
            for a in prometheus.api("alerts")["alerts"]
        )

    wait_for(no_confirm, 90, "PubtasksNoConfirm to go pending for entry text", 0.5)
    assert scraped('pubtasks_ticks_manual_total{entry="text"}') == 1
    if path := os.environ.get("PUBTASKS_DASHBOARD_DATA"):
        Path(path).write_text(json.dumps({"started": started, "panels": drawn}, indent=1) + "\n")
