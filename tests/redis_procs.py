"""Real Redis servers for tests: one ``redis-server``, or a local 3-master Redis Cluster.

Each server listens on a free loopback port, keeps nothing on disk unless asked (``aof=True``
turns on the append-only file in its own temporary directory), logs to a file and is stopped by
the PID it was started with. Never the machine's own Redis, never a mock.

    with RedisServer.start() as server:      # server.url == "redis://127.0.0.1:PORT/0"
        ...
    with RedisClusterProcs.start() as cluster:  # cluster.url == "redis+cluster://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def require_redis() -> None:
    if not redis_available():
        pytest.fail("redis-server and redis-cli are needed: scripts/test installs them")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(bus: bool = False) -> int:
    """A free loopback port; with ``bus``, one whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not bus:
            return port
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port found")


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.strip()


def _wait(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class RedisServer:
    """One ``redis-server`` process. ``stop()`` and ``restart()`` keep the port and directory, so
    a test can take Redis away and bring it back (with its AOF, if enabled)."""

    port: int
    workdir: Path
    aof: bool = False
    cluster: bool = False
    proc: subprocess.Popen[bytes] | None = None
    _owns_dir: bool = True

    @classmethod
    @contextlib.contextmanager
    def start(cls, aof: bool = False) -> Iterator[RedisServer]:
        require_redis()
        workdir = Path(tempfile.mkdtemp(prefix="vb-redis-"))
        server = cls(free_port(), workdir, aof=aof)
        try:
            server.run()
            yield server
        finally:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def run(self) -> None:
        """Start (or start again) the server and wait until it answers PING."""
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--logfile",
            str(self.log_path),
        ]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _cli(self.port, "PING") == "PONG", f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Kill the server by its PID and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.run()

    def flush(self) -> None:
        _cli(self.port, "FLUSHALL")
        _cli(self.port, "SCRIPT", "FLUSH")


@dataclass
class RedisClusterProcs:
    """A local Redis Cluster of three masters made with ``redis-cli --cluster create``; with
    ``replicas=1`` each master has a replica, so that a master can fail over (``nodes[:masters]``
    are the masters as created, the rest their replicas)."""

    nodes: list[RedisServer] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def start(cls, masters: int = 3, replicas: int = 0) -> Iterator[RedisClusterProcs]:
        require_redis()
        workdir = Path(tempfile.mkdtemp(prefix="vb-cluster-"))
        cluster = cls()
        try:
            for _ in range(masters * (1 + replicas)):
                node = RedisServer(free_port(bus=True), workdir, cluster=True)
                node.run()
                cluster.nodes.append(node)
            addresses = [f"127.0.0.1:{n.port}" for n in cluster.nodes]
            done = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
            _wait(cluster._ready, "the cluster to report cluster_state:ok", timeout=20)
            yield cluster
        finally:
            for node in cluster.nodes:
                node.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _ready(self) -> bool:
        live = [n for n in self.nodes if n.proc is not None]
        if not all("cluster_state:ok" in _cli(n.port, "CLUSTER", "INFO") for n in live):
            return False
        # Every replica has finished its first sync, so that a failover loses nothing.
        return all(
            "master_link_status:up" in info or "role:master" in info
            for info in (_cli(n.port, "INFO", "replication") for n in live)
        )

    @property
    def url(self) -> str:
        return self.url_at(0)

    def url_at(self, index: int) -> str:
        """The cluster's URL with ``nodes[index]`` as the seed."""
        return f"redis+cluster://127.0.0.1:{self.nodes[index].port}"

    def replica_of(self, master: RedisServer) -> RedisServer:
        for node in self.nodes:
            if node is not master and node.proc is not None:
                info = _cli(node.port, "INFO", "replication").splitlines()
                if f"master_port:{master.port}" in (line.strip() for line in info):
                    return node
        raise LookupError(f"no replica of the master on port {master.port}")

    def fail_over(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """A manual failover (``CLUSTER FAILOVER`` at ``master``'s replica): the replica takes
        over, the old master lives on as its replica. Returns the new master."""
        replica = self.replica_of(master)
        answer = _cli(replica.port, "CLUSTER", "FAILOVER")
        if answer != "OK":
            raise RuntimeError(f"CLUSTER FAILOVER refused: {answer}")
        _wait(
            lambda: "role:master" in _cli(replica.port, "INFO", "replication"),
            "the replica to take over",
            timeout,
        )
        _wait(self._ready, "the cluster to report cluster_state:ok after the failover", timeout)
        return replica

    def kill_master(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Kill ``master`` (SIGKILL) and wait until its replica is promoted and the cluster
        reports ok again; returns the new master."""
        replica = self.replica_of(master)
        master.stop()
        _wait(
            lambda: "role:master" in _cli(replica.port, "INFO", "replication"),
            "the replica to be promoted",
            timeout,
        )
        _wait(self._ready, "the cluster to report cluster_state:ok after the failover", timeout)
        return replica

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()
