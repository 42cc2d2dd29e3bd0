"""What an operator opens: the Grafana dashboard and the Prometheus alert rules in deploy/ read
only metrics the broker really exports (scraped from a running server's /metrics), in
well-formed PromQL; the rules file has the shape Prometheus loads. And the metrics behind them
move: store errors count a Redis outage, the node count counts nodes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers import start_server
from tests.nodes import broker_nodes, wait_for
from tests.promql import PromQLError, exported_names, metric_names
from tests.redis_procs import RedisServer

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus-alerts.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
# What the dashboard and the alerts must cover (the list), by the metric that shows it.
COVERED = {
    "answer time": "vabroker_answer_seconds_bucket",
    "unanswered share": "vabroker_calls_ended_total",
    "rings per call": "vabroker_rings_total",
    "push failures": "vabroker_push_total",
    "store errors": "vabroker_store_errors_total",
    "node count": "vabroker_nodes",
}


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def load_rules() -> list[dict[str, Any]]:
    """The rules, after checking the file has the shape Prometheus's rule loader requires."""
    data = yaml.safe_load(RULES.read_text())
    assert isinstance(data, dict) and set(data) == {"groups"}, "top level: only 'groups'"
    groups = data["groups"]
    assert isinstance(groups, list) and groups
    names = [g.get("name") for g in groups]
    assert all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)
    rules: list[dict[str, Any]] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
        for rule in group["rules"]:
            where = f"{group['name']}/{rule.get('alert') or rule.get('record')}"
            assert set(rule) <= RULE_KEYS, (where, set(rule) - RULE_KEYS)
            assert ("alert" in rule) != ("record" in rule), where
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert DURATION.match(str(rule[key])), (where, rule[key])
            for key in ("labels", "annotations"):
                values = rule.get(key, {})
                assert isinstance(values, dict), where
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
            if "alert" in rule:
                assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", rule["alert"]), where
                assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
                assert rule["annotations"].get("summary"), where
                assert rule["annotations"].get("description"), where
            rules.append(rule)
    alerts = [r["alert"] for r in rules if "alert" in r]
    assert len(set(alerts)) == len(alerts), "alert names repeat"
    return rules


def dashboard_exprs() -> dict[str, str]:
    """Each query of the dashboard, by panel title and refId, after checking the panels."""
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids), "panel ids repeat"
    exprs: dict[str, str] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            exprs[f"{panel['title']}/{target['refId']}"] = target["expr"]
    return exprs


async def test_every_metric_the_dashboard_and_alerts_read_is_exported() -> None:
    async with start_server() as server:
        exported = exported_names(await scrape(server.url))
    assert {"vabroker_rings_total", "vabroker_answer_seconds_bucket"} <= exported
    expressions = {f"alert {r.get('alert') or r.get('record')}": r["expr"] for r in load_rules()}
    expressions |= {f"panel {k}": v for k, v in dashboard_exprs().items()}
    read: dict[str, set[str]] = {}
    for where, expr in expressions.items():
        names = metric_names(expr)
        assert names, f"{where} reads no metric: {expr}"
        missing = names - exported
        assert not missing, f"{where} reads {sorted(missing)}, which the broker does not export"
        read[where] = names
    everything = set().union(*read.values())
    for what, metric in COVERED.items():
        assert any(metric in names for w, names in read.items() if w.startswith("alert")), what
        assert any(metric in names for w, names in read.items() if w.startswith("panel")), what
    assert everything <= exported


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("rate(vabroker_ringz_total[5m])", None),  # well formed; the name check catches it
        ("rat(vabroker_rings_total[5m])", "unknown function"),
        ("sum(rate(vabroker_rings_total[5q]))", "bad duration"),
        ("sum(rate(vabroker_rings_total[5m])", "unclosed"),
        ('vabroker_push_total{result="failed"', "unclosed"),
        ("vabroker_push_total{result=failed}", "bad label matcher"),
        ('vabroker_push_total{result=~"(sent"}', "bad regular expression"),
        ('sum by (le, "x") (rate(x[5m]))', "bad label list"),
        ("sum by (le instance) (rate(x[5m]))", "bad label list"),
        ("sum by (le (rate(x[5m]))", "unclosed"),
    ],
)
def test_the_promql_checker_refuses_what_prometheus_would(expr: str, why: str | None) -> None:
    if why is None:
        assert metric_names(expr) == {"vabroker_ringz_total"}
        return
    with pytest.raises(PromQLError, match=why):
        metric_names(expr)


def test_metric_names_of_typical_expressions() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le) (rate(vabroker_answer_seconds_bucket[$__rate_interval])))"
        ' / on (instance) group_left max(vabroker_nodes offset 5m) > bool 1e-3 unless absent(up{job="x"})'
    )
    assert metric_names(expr) == {"vabroker_answer_seconds_bucket", "vabroker_nodes", "up"}


@pytest.fixture(scope="module")
def redis_for_metrics() -> Any:
    with RedisServer.start() as server:
        yield server


async def test_store_errors_and_nodes_are_counted(
    redis_for_metrics: RedisServer, tmp_path: Path
) -> None:
    redis_for_metrics.flush()
    with broker_nodes(redis_for_metrics.url + "?timeout=1", tmp_path, count=2) as (a, _b):

        async def two_nodes() -> bool:
            return "vabroker_nodes 2.0" in await scrape(a.url)

        await wait_for(two_nodes, "node A to count two nodes")
        assert "vabroker_store_errors_total{" not in await scrape(a.url)  # none yet
        redis_for_metrics.stop()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(a.url + "/readyz") as resp:
                    assert resp.status == 503

            async def counted() -> bool:
                text = await scrape(a.url)
                return (
                    re.search(r'vabroker_store_errors_total\{operation="ping"\} [1-9]', text)
                    is not None
                )

            await wait_for(counted, "the failed pings to be counted")
        finally:
            redis_for_metrics.run()
