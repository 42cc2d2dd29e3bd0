"""The deployment of ``docker-compose.yml``, run natively on loopback: redis-server, two
``vabroker serve`` nodes, HAProxy with ``deploy/haproxy.cfg`` and coturn with
``deploy/turnserver.conf``.

The configuration files are the real ones, read from ``deploy/`` and changed only where a single
machine needs it: every host name and port becomes a free port on 127.0.0.1 (see
``haproxy_config`` and ``coturn_config``). The brokers' settings and coturn's command line come
from the compose file, expanded as compose would. So a change to the deployment files is a change
to what runs here.

    with Deployment.start(logdir) as d:   # d.ws_url: the balancer; d.nodes: the brokers
        ...

``python -m tests.deployment`` (``scripts/deployment``) starts it and waits, for a person to try.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import BrokerNode, node_env
from tests.redis_procs import RedisServer, free_port
from tests.test_deploy import BROKERS, compose, expand

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
# The realm names the TURN server in the compose file's URLs; here the server is this machine.
TURN_HOST = LOOPBACK


def require_binaries() -> None:
    missing = [b for b in ("haproxy", "turnserver", "redis-server") if not shutil.which(b)]
    if missing:
        pytest.fail(f"{', '.join(missing)} needed: scripts/test installs haproxy and coturn")


def _one(pattern: str, text: str, what: str) -> re.Match[str]:
    found = list(re.finditer(pattern, text, re.M))
    if len(found) != 1:
        raise ValueError(f"expected one {what} in the configuration, found {len(found)}")
    return found[0]


def haproxy_config(text: str, port: int, backends: dict[str, int]) -> str:
    """``deploy/haproxy.cfg`` with its listener on ``127.0.0.1:port`` and each broker server at
    ``127.0.0.1:<its port>``; nothing else changes."""
    bind = _one(r"^(\s*bind )\S*:\d+", text, "bind line")
    text = text[: bind.start()] + f"{bind.group(1)}{LOOPBACK}:{port}" + text[bind.end() :]
    for name, backend_port in backends.items():
        server = _one(rf"^(\s*server {re.escape(name)} )\S+:\d+", text, f"server {name}")
        text = (
            text[: server.start()]
            + f"{server.group(1)}{LOOPBACK}:{backend_port}"
            + text[server.end() :]
        )
    return text


def coturn_config(text: str, port: int, relay_ports: tuple[int, int]) -> str:
    """``deploy/turnserver.conf`` listening and relaying on 127.0.0.1 only, on free ports.

    One more thing cannot be the same on one machine: both parties' relayed addresses are on
    127.0.0.1, so coturn must relay between two loopback addresses, which production refuses
    (``denied-peer-ip`` for 127.0.0.0/8). ``allowed-peer-ip=127.0.0.1`` (which coturn lets win
    over a deny) and ``allow-loopback-peers`` open exactly that address, and nothing else of
    the production list is touched.
    """
    for key, value in (
        ("listening-port", port),
        ("min-port", relay_ports[0]),
        ("max-port", relay_ports[1]),
    ):
        line = _one(rf"^{key}=\d+$", text, key)
        text = text[: line.start()] + f"{key}={value}" + text[line.end() :]
    return text + "\n".join(
        [
            "",
            "# On one machine, for the tests: loopback only.",
            f"listening-ip={LOOPBACK}",
            f"relay-ip={LOOPBACK}",
            f"allowed-peer-ip={LOOPBACK}",
            "allow-loopback-peers",
            "",
        ]
    )


def haproxy_limits(cfg: Path) -> list[str]:
    """HAProxy (2.6 on) refuses to start when it cannot get the file descriptors its
    ``maxconn`` needs (about two a connection). Production gives it the limit (the compose
    file's ``ulimits``); a machine that cannot gets ``-n`` with what fits, on the command line."""
    found = re.search(r"^\s*maxconn (\d+)", cfg.read_text(), re.M)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if found is None or hard == resource.RLIM_INFINITY:
        return []
    fits = (hard - 200) // 2
    return ["-n", str(fits)] if int(found.group(1)) > fits else []


def free_udp_range(size: int) -> tuple[int, int]:
    """``size`` consecutive loopback UDP ports that are free now (coturn's relay range)."""
    for _ in range(200):
        low = secrets.randbelow(20000) + 20000
        socks: list[socket.socket] = []
        try:
            for p in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((LOOPBACK, p))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {size} consecutive free UDP ports on loopback")


def _http(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


@dataclass
class Process:
    """A server started with its log in a file, stopped by its PID."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass
class Deployment:
    workdir: Path
    redis: RedisServer
    nodes: list[BrokerNode]
    lb_port: int
    turn_port: int
    relay_ports: tuple[int, int]
    turn_secret: str
    jwt_secret: str
    haproxy: Process
    coturn: Process

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.lb_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.lb_port}/v1/ws"

    @property
    def turn_address(self) -> tuple[str, int]:
        return LOOPBACK, self.turn_port

    def node(self, name: str) -> BrokerNode:
        return next(n for n in self.nodes if n.name == name)

    @classmethod
    @contextlib.contextmanager
    def start(cls, logdir: Path | None = None, **broker_settings: Any) -> Iterator[Deployment]:
        """Everything started on free loopback ports, and stopped (by PID) on the way out."""
        require_binaries()
        from tests.helpers import SECRET

        with contextlib.ExitStack() as stack:
            workdir = logdir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="vb-deploy-"))
            )
            redis = stack.enter_context(RedisServer.start())
            services = compose()["services"]
            turn_secret = secrets.token_hex(24)
            env = {
                "VABROKER_JWT_SECRET": SECRET,
                "TURN_SECRET": turn_secret,
                "TURN_REALM": TURN_HOST,
                "TURN_EXTERNAL_IP": LOOPBACK,
            }
            turn_port = free_port()
            nodes: list[BrokerNode] = []
            for name in BROKERS:
                svc = services[name]
                command = svc["command"]
                store = command[command.index("--store") + 1]
                store = re.sub(r"//redis:6379/", f"//{LOOPBACK}:{redis.port}/", store)
                if store == command[command.index("--store") + 1]:
                    raise ValueError(f"{name}'s store URL does not name redis:6379: {store}")
                variables = {k: expand(str(v), env) for k, v in svc["environment"].items()}
                settings: dict[str, Any] = {
                    k.removeprefix("VABROKER_").lower(): v.replace(
                        f"{TURN_HOST}:3478", f"{TURN_HOST}:{turn_port}"
                    )
                    for k, v in variables.items()
                    if k.startswith("VABROKER_")
                }
                settings.update(broker_settings)
                node = BrokerNode(
                    name,
                    free_port(),
                    workdir / f"{name}.log",
                    node_env(f"{store}?timeout=2", name, **settings),
                )
                nodes.append(node)
                stack.callback(node.kill, signal.SIGTERM)
                node.start()

            lb_port = free_port()
            cfg = workdir / "haproxy.cfg"
            cfg.write_text(
                haproxy_config(
                    (ROOT / "deploy/haproxy.cfg").read_text(),
                    lb_port,
                    {n.name: n.port for n in nodes},
                )
            )
            haproxy = Process(
                "haproxy",
                ["haproxy", "-f", str(cfg), "-db", *haproxy_limits(cfg)],
                workdir / "lb.log",
            )
            stack.callback(haproxy.stop)
            haproxy.start()

            conf_text = (ROOT / "deploy/turnserver.conf").read_text()
            low, high = (
                re.search(r"^min-port=(\d+)$", conf_text, re.M),
                re.search(r"^max-port=(\d+)$", conf_text, re.M),
            )
            assert low and high, "deploy/turnserver.conf names no relay port range"
            relay_ports = free_udp_range(int(high.group(1)) - int(low.group(1)) + 1)
            conf = workdir / "turnserver.conf"
            conf.write_text(coturn_config(conf_text, turn_port, relay_ports))
            args = [expand(a, env) for a in services["coturn"]["command"]]
            args[args.index("-c") + 1] = str(conf)
            coturn = Process(
                "coturn",
                [
                    "turnserver",
                    *args,
                    # Where a machine's coturn keeps its files: here, in the test's directory.
                    f"--pidfile={workdir / 'turnserver.pid'}",
                    f"--userdb={workdir / 'turndb'}",
                    "--log-file=stdout",
                ],
                workdir / "coturn.log",
            )
            stack.callback(coturn.stop)
            coturn.start()

            deployment = cls(
                workdir,
                redis,
                nodes,
                lb_port,
                turn_port,
                relay_ports,
                turn_secret,
                SECRET,
                haproxy,
                coturn,
            )
            deployment.wait_balanced(timeout=20)
            deployment.wait_turn(timeout=10)
            yield deployment

    # --- waiting for the parts -----------------------------------------------------------------
    def served_by(self) -> str | None:
        """The node that answers one request through the balancer (None: no answer)."""
        status, body = _http(self.url + "/healthz")
        if status != 200:
            return None
        return str(json.loads(body)["node"])

    def servers_up(self) -> set[str]:
        """The brokers the balancer sends clients to now, from the state changes it logs (a
        server is up until its health checks say otherwise)."""
        up = {n.name for n in self.nodes}
        for name, state in re.findall(
            r"Server brokers/(\S+) is (UP|DOWN)", self.haproxy.log_path.read_text()
        ):
            (up.add if state == "UP" else up.discard)(name)
        return up

    def wait_balanced(self, names: set[str] | None = None, timeout: float = 20.0) -> None:
        """Until the balancer's health checks have caught up with the nodes: it sends clients
        to every node in ``names`` (default: all) and to no other, and answers."""
        want = names if names is not None else {n.name for n in self.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.haproxy.alive():
                raise RuntimeError(f"haproxy exited:\n{self.haproxy.log()}")
            if self.servers_up() == want and self.served_by() in want:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the balancer did not settle on {sorted(want)}:\n{self.haproxy.log()}")

    def wait_turn(self, timeout: float = 10.0) -> None:
        """Until coturn answers a STUN binding request on its UDP port."""
        from aioice import stun

        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if not self.coturn.alive():
                    raise RuntimeError(f"coturn exited:\n{self.coturn.log()}")
                s.sendto(bytes(request), self.turn_address)
                try:
                    answer = stun.parse_message(s.recv(2048))
                except OSError:
                    continue
                if answer.message_class == stun.Class.RESPONSE:
                    return
        raise TimeoutError(f"coturn did not answer on UDP {self.turn_port}:\n{self.coturn.log()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the compose deployment natively on loopback until interrupted."
    )
    parser.add_argument("--logs", type=Path, help="directory for the logs and generated configs")
    options = parser.parse_args()
    if options.logs:
        options.logs.mkdir(parents=True, exist_ok=True)
    with Deployment.start(options.logs) as d:
        print(f"balancer      {d.url}  (WebSocket {d.ws_url})")
        for n in d.nodes:
            print(f"broker        {n.name} {n.url}  log {n.log_path}")
        print(f"redis         {d.redis.url}")
        print(f"coturn        turn:{LOOPBACK}:{d.turn_port}  relay ports {d.relay_ports}")
        print(f"configs, logs {d.workdir}")
        print(f"JWT secret    {d.jwt_secret}")
        print("Ctrl-C stops everything.", flush=True)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
