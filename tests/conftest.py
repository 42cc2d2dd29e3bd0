"""Shared fixtures: a broker core on a virtual clock, and a real server on 127.0.0.1."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import pytest

from broker.clock import VirtualClock
from broker.dispatch import DispatchSettings
from broker.service import Broker
from broker.store.memory import MemoryStore
from tests.helpers import Server, start_server

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
