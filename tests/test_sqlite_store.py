"""What only the durable store does (the contract suites cover the rest): ended calls leave
memory and are read from the file, calls open at a crash end as ``failed``, one process per
file, backups, and the settings and commands that choose and copy the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from broker.model import Call, CallState, EndReason, Feedback, Profile, RingWindow, Role
from broker.stats import day_of
from broker.store import open_store
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_file import (
    SCHEMA_VERSION,
    NotABrokerFile,
    StoreInUse,
    backup,
    restore,
    sqlite_path,
)
from clients.cli import main
from signaling.config import ConfigError, load_settings, serve_settings

NOW = 1_781_524_800.0  # 2026-06-15 12:00 UTC


def new_call(cid: str, recipient: str) -> Call:
    return Call(
        id=cid,
        recipient_id=recipient,
        language="en",
        languages=["en"],
        state=CallState.SEARCHING,
        requested_at=NOW,
    )


async def answered(store: SqliteStore, cid: str, recipient: str, helper: str) -> None:
    assert await store.create_call(new_call(cid, recipient))
    assert await store.reserve_ring(cid, helper, "2026-06-15", 10, NOW + 1)
    assert await store.assign(cid, helper, helper.upper(), Role.VOLUNTEER, NOW + 2)


async def test_ended_calls_leave_memory_and_are_read_from_the_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db", keep_ended_s=60.0, now=lambda: NOW)
    await answered(store, "c1", "r1", "v1")
    assert await store.finish("c1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 10)
    assert "c1" in store._calls  # still within the horizon
    await answered(store, "c2", "r2", "v2")
    assert await store.finish("c2", EndReason.COMPLETED, Role.RECIPIENT, NOW + 100)
    assert "c1" not in store._calls and "c2" in store._calls
    assert not store._history and not store._ended  # history lives in the file only
    call = await store.get_call("c1")
    assert call is not None and call.end_reason is EndReason.COMPLETED and call.helper_id == "v1"
    # Changes to a call that left memory go to the file.
    await store.update_call("c1", topic="later")
    assert await store.mark_media("c1", NOW + 3)
    assert not await store.mark_media("c1", NOW + 4)
    with pytest.raises(ValueError, match="assign or finish"):
        await store.update_call("c1", state=CallState.SEARCHING)
    again = await store.get_call("c1")
    assert again is not None and again.topic == "later" and again.media_at == NOW + 3
    assert [c.id for c in await store.calls_of("v1")] == ["c1"]
    assert [c.id for c in await store.ended_calls(NOW, NOW + 1000)] == ["c1", "c2"]
    assert await store.ended_between(NOW, NOW + 1000, 1) == [("c1", NOW + 10)]
    assert await store.add_feedback(Feedback(call_id="c1", user_id="r1", rating="up", at=NOW))
    await store.scrub_call("c1", {"r1": "anon_1"})
    scrubbed = await store.get_call("c1")
    assert scrubbed is not None and scrubbed.recipient_id == "anon_1"
    assert [f.user_id for f in await store.feedback_of("c1")] == ["anon_1"]
    await store.close()


async def test_calls_open_at_a_crash_end_as_failed_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(path, now=lambda: NOW)
    always = RingWindow(start="00:00", end="00:00")
    await store.put_profile(Profile(user_id="v1", role=Role.VOLUNTEER, ring_window=always))
    await store.set_on_duty("v1", True)
    await answered(store, "c1", "r1", "v1")  # in progress
    assert await store.create_call(new_call("c2", "r2"))  # still searching
    await store.close()  # as good as a kill: nothing is written at close

    restarted = SqliteStore(path, now=lambda: NOW + 500)
    assert sorted(restarted.recovered) == ["c1", "c2"]
    for cid, parties in (("c1", ["r1", "v1"]), ("c2", ["r2"])):
        call = await restarted.get_call(cid)
        assert call is not None and call.state is CallState.ENDED
        assert call.end_reason is EndReason.FAILED and call.ended_by is None
        assert call.ended_at == NOW + 500
        for party in parties:
            assert [c.id for c in await restarted.calls_of(party)] == [cid]
            assert await restarted.current_call(party) is None
    (counts,) = await restarted.day_counts([day_of(NOW)])
    assert counts["all"].created == 2 and counts["all"].answered == 1
    # Each party is told once, even across another restart before they sign in.
    assert await restarted.take_interrupted("r1") == ["c1"]
    assert await restarted.take_interrupted("r1") == []
    # The helper's fairness record is rebuilt from the calls.
    await restarted.set_connected("v1", True)
    (candidate,) = [c for c in await restarted.candidates("en", NOW + 600) if c.user_id == "v1"]
    assert candidate.calls_30d == 1 and not candidate.busy
    await restarted.close()
    # Recovery happens once: a second restart finds nothing open.
    third = SqliteStore(path, now=lambda: NOW + 900)
    assert third.recovered == []
    assert await third.take_interrupted("r1") == []
    assert await third.take_interrupted("v1") == ["c1"]
    assert await third.take_interrupted("r2") == ["c2"]
    (counts,) = await third.day_counts([day_of(NOW)])
    assert counts["all"].created == 2
    await third.close()


async def test_one_process_per_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    with pytest.raises(StoreInUse, match="in use by another vabroker"):
        SqliteStore(tmp_path / "b.db")
    with pytest.raises(StoreInUse):
        restore(tmp_path / "b.db", tmp_path / "b.db")
    await store.close()
    await SqliteStore(tmp_path / "b.db").close()  # free again once closed


async def test_files_that_are_not_a_store_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough to look like a header " * 20)
    with pytest.raises(NotABrokerFile, match="not a vabroker database"):
        SqliteStore(text)
    with pytest.raises(NotABrokerFile):  # not StoreInUse: the refusal released its lock
        SqliteStore(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(NotABrokerFile, match="not a vabroker database"):
        backup(other, tmp_path / "copy.db")
    newer = tmp_path / "newer.db"
    await SqliteStore(newer).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(NotABrokerFile, match="newer vabroker"):
        SqliteStore(newer)
    with pytest.raises(NotABrokerFile, match="no such file"):
        backup(tmp_path / "absent.db", tmp_path / "copy.db")


async def test_backup_while_open_and_restore(tmp_path: Path) -> None:
    path = tmp_path / "data" / "b.db"
    store = SqliteStore(path, now=lambda: NOW)
    await answered(store, "c1", "r1", "v1")
    await store.finish("c1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 10)
    backup(path, tmp_path / "copy.db")  # while the store is open and in use
    assert await store.create_call(new_call("c2", "r2"))
    await store.close()
    restore(tmp_path / "copy.db", path)
    restored = SqliteStore(path, now=lambda: NOW + 20)
    assert restored.recovered == [] and await restored.get_call("c2") is None
    assert [c.id for c in await restored.calls_of("r1")] == ["c1"]
    await restored.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///x.db?cache=big", "unknown option"),
        ("sqlite:///x.db?synchronous=sometimes", "normal or full"),
    ],
)
def test_bad_sqlite_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sqlite_path(url)
    with pytest.raises(ConfigError, match="store_url"):
        load_settings(store_url=url)


async def test_sqlite_urls(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///var/lib/b.db") == ("/var/lib/b.db", "normal")
    assert sqlite_path("sqlite://data/b.db?synchronous=FULL") == ("data/b.db", "full")
    store = open_store(f"sqlite://{tmp_path}/b.db?synchronous=full")
    assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/b.db"
    await store.close()


def test_serve_defaults_to_the_durable_store_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VABROKER_STORE_URL", "VABROKER_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().store_url == "memory://"  # a broker built in code
    assert serve_settings().store_url == f"sqlite://{tmp_path}/xdg/vabroker/broker.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    home = Path.home() / ".local" / "share" / "vabroker" / "broker.db"
    assert serve_settings().store_url == f"sqlite://{home}"
    assert serve_settings(data_dir=str(tmp_path / "d")).store_url == (
        f"sqlite://{tmp_path}/d/broker.db"
    )
    monkeypatch.setenv("VABROKER_DATA_DIR", str(tmp_path / "e"))
    assert serve_settings().store_url == f"sqlite://{tmp_path}/e/broker.db"
    config = tmp_path / "broker.toml"
    config.write_text('store_url = "redis://127.0.0.1:7000/0"\n')
    assert serve_settings(config).store_url == "redis://127.0.0.1:7000/0"
    monkeypatch.setenv("VABROKER_STORE_URL", "memory://")
    assert serve_settings(config).store_url == "memory://"


async def test_backup_and_restore_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data / "broker.db", now=lambda: NOW)
    await answered(store, "c1", "r1", "v1")
    await store.finish("c1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 10)
    dest = tmp_path / "copy.db"
    assert main(["backup", str(dest), "--data-dir", str(data)]) == 0
    assert main(["backup", str(dest), "--data-dir", str(data)]) == 2
    assert "exists (add --force" in capsys.readouterr().err
    assert main(["backup", str(dest), "--data-dir", str(data), "--force"]) == 0
    assert main(["backup", str(tmp_path), "--data-dir", str(data), "--force"]) == 2
    assert "unable to open" in capsys.readouterr().err  # a directory is not a file
    assert main(["backup", str(dest), "--store", "memory://"]) == 2
    assert "copy the embedded store's file" in capsys.readouterr().err
    assert main(["restore", str(dest), "--data-dir", str(data)]) == 2
    assert "in use by another vabroker" in capsys.readouterr().err
    await store.close()
    assert main(["restore", str(tmp_path / "nothing.db"), "--data-dir", str(data)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["restore", str(dest), "--data-dir", str(data)]) == 0
    restored = SqliteStore(data / "broker.db")
    assert [c.id for c in await restored.calls_of("v1")] == ["c1"]
    await restored.close()


def test_serve_refuses_a_bad_store_or_a_file_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VABROKER_STORE_URL", raising=False)
    monkeypatch.setenv("VABROKER_JWT_SECRET", "x" * 32)
    assert main(["serve", "--store", "sqlite://"]) == 2
    assert "names no file" in capsys.readouterr().err
    holder = SqliteStore(tmp_path / "broker.db")  # as another vabroker serve would
    try:
        assert main(["serve", "--port", "0", "--data-dir", str(tmp_path)]) == 1
        assert "in use by another vabroker process" in capsys.readouterr().err
    finally:
        asyncio.run(holder.close())
