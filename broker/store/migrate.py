"""``vabroker migrate``: every record of one durable store written, as it was, into another
(the embedded store to Redis when a deployment grows to several nodes, or back).

Both ends must keep records (``Portable``): ``memory://`` is refused, it holds nothing once the
process ends. The target must be empty, so that a migration never merges two histories (ids
of cases and audit entries would collide). The brokers on both ends should be stopped: records
written during a migration may be missed. A durable embedded store read as the source first
ends the calls it holds open, as a start-up does (``broker.store.sqlite``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from broker.store import open_store
from broker.store.base import RECORD_KINDS, MigrationRefused, Portable, Record, Store
from broker.store.sqlite_file import sqlite_path


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _check_url(url: str, end: str) -> None:
    scheme = _scheme(url)
    if scheme == "memory":
        raise MigrationRefused(
            f"the {end} is memory://, which keeps nothing once its process ends: "
            "migrate between sqlite://, redis:// and redis+cluster:// stores"
        )
    if scheme == "sqlite" and end == "source":
        path, _ = sqlite_path(url)
        if not Path(path).is_file():
            raise MigrationRefused(f"the source {path} does not exist")


def _portable(store: Store, end: str) -> Portable:
    if not isinstance(store, Portable):
        raise MigrationRefused(f"the {end} store cannot export or import records")
    return store


async def migrate(source_url: str, target_url: str) -> dict[str, int]:
    """Copy every record from ``source_url`` into the empty store at ``target_url``; returns
    how many records of each kind were moved, in ``RECORD_KINDS`` order. ``ValueError`` for a
    malformed URL, ``MigrationRefused`` for a migration that must not run, ``StoreUnavailable``
    when an end cannot be reached."""
    _check_url(source_url, "source")
    _check_url(target_url, "target")
    if source_url == target_url:
        raise MigrationRefused("the source and the target are the same store")
    source_store = open_store(source_url)
    try:
        await source_store.ping()
        source = _portable(source_store, "source")
        target_store = open_store(target_url)
        try:
            await target_store.ping()
            target = _portable(target_store, "target")
            async for _ in target.export_records():
                raise MigrationRefused(
                    "the target store already holds records: migrate into an empty store"
                )
            counts: Counter[str] = Counter()

            async def counted() -> AsyncIterator[Record]:
                async for record in source.export_records():
                    counts[record.kind] += 1
                    yield record

            await target.import_records(counted())
        finally:
            await target_store.close()
    finally:
        await source_store.close()
    return {kind: counts[kind] for kind in RECORD_KINDS}
