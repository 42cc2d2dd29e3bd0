"""Reading the deployment files keeps them consistent with the code (tests/deployment.py runs them):
services, ports, the store URL and the secrets the brokers and coturn must share."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.store.redis import parse_redis_url
from signaling.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("broker-a", "broker-b")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def expand(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, from ``env``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg or ""
        raise KeyError(f"{name} is required: {arg}")

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


def test_services_and_the_balancer() -> None:
    services = compose()["services"]
    assert {"redis", "lb", "coturn", *BROKERS} <= set(services)
    haproxy = (ROOT / "deploy/haproxy.cfg").read_text()
    backends = re.findall(r"^\s*server (\S+) (\S+):(\d+) check", haproxy, re.M)
    assert sorted((name, host) for name, host, _ in backends) == [(b, b) for b in BROKERS]
    for name, _, port in backends:
        command = services[name]["command"]
        assert command[command.index("--port") + 1] == port
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert port in services[name]["expose"]
    assert "timeout tunnel" in haproxy  # WebSockets outlive the HTTP timeouts
    assert "option httpchk GET /readyz" in haproxy
    bind = re.search(r"^\s*bind :(\d+)", haproxy, re.M)
    assert bind is not None and f"{bind.group(1)}:{bind.group(1)}" in services["lb"]["ports"]
    assert "./deploy/haproxy.cfg:" in services["lb"]["volumes"][0]


def test_brokers_share_redis_and_secrets_with_coturn() -> None:
    services = compose()["services"]
    env = {
        "VABROKER_JWT_SECRET": "j" * 32,
        "TURN_SECRET": "t" * 32,
        "TURN_REALM": "turn.test",
        "TURN_EXTERNAL_IP": "203.0.113.7",
    }
    node_ids = set()
    for name in BROKERS:
        svc = services[name]
        command = svc["command"]
        url = command[command.index("--store") + 1]
        target, cluster, _ = parse_redis_url(url)
        assert not cluster and target.startswith("redis://redis:6379/")
        assert "redis" in svc["depends_on"]
        variables = {k: expand(str(v), env) for k, v in svc["environment"].items()}
        node_ids.add(variables["VABROKER_NODE_ID"])
        # What each broker would run with validates as its settings.
        settings = Settings(
            store_url=url,
            node_id=variables["VABROKER_NODE_ID"],
            jwt_secret=variables["VABROKER_JWT_SECRET"],
            turn_secret=variables["VABROKER_TURN_SECRET"],
            turn_urls=json.loads(variables["VABROKER_TURN_URLS"]),
            stun_urls=json.loads(variables["VABROKER_STUN_URLS"]),
        )
        assert settings.turn_secret is not None
        assert settings.turn_secret.get_secret_value() == env["TURN_SECRET"]
        assert all("turn.test:3478" in u for u in settings.turn_urls)
        assert svc["environment"]["VABROKER_TURN_SECRET"].startswith("${TURN_SECRET")
        assert svc["environment"]["VABROKER_JWT_SECRET"].startswith("${VABROKER_JWT_SECRET")
    assert len(node_ids) == len(BROKERS)  # each node its own name and channel
    coturn = services["coturn"]
    args = [expand(a, env) for a in coturn["command"]]
    assert f"--static-auth-secret={env['TURN_SECRET']}" in args
    assert "--realm=turn.test" in args
    assert "--external-ip=203.0.113.7" in args  # behind the port mapping: the public address
    conf = (ROOT / "deploy/turnserver.conf").read_text()
    assert re.search(r"^use-auth-secret$", conf, re.M)
    port = re.search(r"^listening-port=(\d+)$", conf, re.M)
    assert port is not None and f"{port.group(1)}:{port.group(1)}/udp" in coturn["ports"]
    low = re.search(r"^min-port=(\d+)$", conf, re.M)
    high = re.search(r"^max-port=(\d+)$", conf, re.M)
    assert low and high
    assert f"{low.group(1)}-{high.group(1)}:{low.group(1)}-{high.group(1)}/udp" in coturn["ports"]


def test_redis_keeps_an_append_only_file() -> None:
    redis = compose()["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_a_missing_secret_is_an_error_not_an_empty_value() -> None:
    services = compose()["services"]
    for name in BROKERS:
        value = services[name]["environment"]["VABROKER_TURN_SECRET"]
        try:
            expand(value, {})
        except KeyError as exc:
            assert "TURN_SECRET" in str(exc)
        else:
            raise AssertionError(f"{name} would start with an empty TURN secret")


# --- the same files, made local for the deployment run (tests/deployment.py) -------------------
# (imported in each test: tests/deployment.py reads the compose file with this module's helpers)


def test_the_local_haproxy_config_changes_only_addresses() -> None:
    from tests.deployment import haproxy_config

    original = (ROOT / "deploy/haproxy.cfg").read_text()
    local = haproxy_config(original, 18080, {"broker-a": 18081, "broker-b": 18082})
    assert re.search(r"^\s*bind 127\.0\.0\.1:18080$", local, re.M)
    assert re.search(r"^\s*server broker-a 127\.0\.0\.1:18081 check$", local, re.M)
    assert re.search(r"^\s*server broker-b 127\.0\.0\.1:18082 check$", local, re.M)
    changed = [
        (a, b) for a, b in zip(original.splitlines(), local.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 3, changed


def test_the_local_coturn_config_keeps_every_production_line_but_ports() -> None:
    from tests.deployment import coturn_config

    original = (ROOT / "deploy/turnserver.conf").read_text()
    local = coturn_config(original, 13478, (40000, 40040))
    kept = set(local.splitlines())
    ports = ("listening-port=", "min-port=", "max-port=")
    assert all(line in kept for line in original.splitlines() if not line.startswith(ports))
    assert {"listening-port=13478", "min-port=40000", "max-port=40040"} <= kept
    assert "denied-peer-ip=127.0.0.0-127.255.255.255" in kept  # still refused, but for
    assert "allowed-peer-ip=127.0.0.1" in kept  # the one address both relays have here


def test_a_config_the_local_run_cannot_place_is_an_error_naming_what_is_missing() -> None:
    from tests.deployment import coturn_config, haproxy_config

    haproxy = (ROOT / "deploy/haproxy.cfg").read_text()
    with pytest.raises(ValueError, match="server broker-c"):
        haproxy_config(haproxy, 1, {"broker-c": 2})
    with pytest.raises(ValueError, match="bind line"):
        haproxy_config(haproxy.replace("bind :8080", ""), 1, {})
    with pytest.raises(ValueError, match="min-port"):
        coturn_config("listening-port=3478\nmax-port=2\n", 1, (2, 3))
