"""Shared fixtures: a broker core on a virtual clock, and a real server on 127.0.0.1."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.service import Broker
from broker.store import Store, open_store
from broker.store.memory import MemoryStore
from tests.helpers import Server, start_server
from tests.redis_procs import RedisServer

# Tests only ever talk to loopback, never through a proxy the environment may name.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, ["127.0.0.1,localhost,::1", os.environ.get(_var)]))


@pytest.fixture
def clock() -> VirtualClock:
    # 2026-06-15 12:00 UTC: daytime in Europe, so default ring windows are open there.
    return VirtualClock(1_781_524_800.0)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The broker's core on each of its stores: memory, a SQLite file, a real Redis (one
    server per module, emptied for each test)."""
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite://{tmp_path}/broker.db"
    else:
        server: RedisServer = request.getfixturevalue("module_redis")
        server.flush()
        url = server.url
    st = open_store(url)
    await st.ping()
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
def settings() -> DispatchSettings:
    return DispatchSettings(
        first_wave=2,
        wave_growth=2.0,
        max_wave=8,
        wave_interval_s=10,
        ring_timeout_s=45,
        max_wait_s=120,
    )


@pytest.fixture
def broker(store: MemoryStore, clock: VirtualClock, settings: DispatchSettings) -> Broker:
    return Broker(store, clock, settings, rng=random.Random(7))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with start_server() as srv:
        yield srv
