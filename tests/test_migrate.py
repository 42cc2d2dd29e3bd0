"""``vabroker migrate``: every record of the durable embedded store moved to Redis (one server,
and a cluster) and back into a second file, record for record; and the migrations it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import time
from pathlib import Path

import pytest

from broker.model import Call, CallState, EndReason, Feedback, Invite, Profile, RingWindow, Role
from broker.moderation import (
    AuditAction,
    AuditEntry,
    AuditQuery,
    Case,
    CaseAction,
    CaseQuery,
    Party,
    ReportReason,
    Resolution,
    Restriction,
    RestrictionKind,
)
from broker.notify.devices import Device, Platform
from broker.orgs import Org, QueueConfig
from broker.stats import Counts
from broker.store import open_store
from broker.store.base import Portable, Record
from broker.store.migrate import migrate
from broker.store.sqlite import SqliteStore
from clients.cli import main
from tests.redis_procs import RedisClusterProcs, RedisServer, free_port, require_redis

NOW = 1_781_524_800.0  # 2026-06-15 12:00 UTC
DAY = "2026-06-15"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcs]:
    require_redis()
    with RedisClusterProcs.start() as cluster:
        yield cluster


def call(cid: str, recipient: str, **fields: object) -> Call:
    values: dict[str, object] = {
        "id": cid,
        "recipient_id": recipient,
        "language": "en",
        "languages": ["en"],
        "state": CallState.SEARCHING,
        "requested_at": NOW,
    }
    values.update(fields)
    return Call.model_validate(values)


async def fill(store: SqliteStore) -> None:
    """Every kind of record, through the store contract."""
    await store.put_profile(
        Profile(
            user_id="v1",
            role=Role.VOLUNTEER,
            display_name="Vé",
            languages=["fr", "en"],
            timezone="Europe/Paris",
            ring_window=RingWindow(start=time(8), end=time(20)),
            daily_ring_cap=3,
        )
    )
    await store.put_profile(
        Profile(user_id="v2", role=Role.VOLUNTEER, languages=["es"], timezone="America/Lima")
    )
    await store.put_profile(Profile(user_id="r1", role=Role.RECIPIENT, note="uses a cane"))
    await store.put_profile(Profile(user_id="r2", role=Role.RECIPIENT, languages=["de"]))
    await store.put_profile(Profile(user_id="a1", role=Role.AGENT, org="o1"))
    await store.block("r1", "v2")
    for uid in ("v1", "v2"):
        await store.set_on_duty(uid, True)
    await store.add_device(
        Device(id="d_1", user_id="v1", platform=Platform.FCM, token="tok-1", created_at=NOW)
    )
    await store.add_device(
        Device(id="d_2", user_id="v1", platform=Platform.APNS, token="ab" * 32, voip=True)
    )
    await store.add_device(Device(id="d_3", user_id="v2", platform=Platform.FCM, token="tok-3"))
    org = Org(
        id="o1",
        name="Optics",
        languages=["en"],
        timezone="Europe/London",
        queues=[QueueConfig(id="q1", name="General"), QueueConfig(id="q2", name="Billing")],
    )
    await store.put_org(org)
    await store.set_agent_state("o1", "a1", "available", NOW, "Agent One")
    await store.set_connected("a1", True)  # a connection is not a record: it is not moved
    assert await store.agent_missed("o1", "a1") == 1
    # Answered by a volunteer, media, ended by the recipient, feedback from both.
    assert await store.create_call(call("c_1", "r1", topic="a label"))
    assert await store.reserve_ring("c_1", "v1", DAY, 3, NOW + 1)
    assert await store.assign("c_1", "v1", "Vé", Role.VOLUNTEER, NOW + 2)
    assert await store.mark_media("c_1", NOW + 3)
    assert await store.finish("c_1", EndReason.COMPLETED, Role.RECIPIENT, NOW + 60)
    assert await store.add_feedback(Feedback(call_id="c_1", user_id="r1", rating="good", at=NOW))
    assert await store.add_feedback(
        Feedback(call_id="c_1", user_id="v1", rating="bad", comment="rude", at=NOW + 61)
    )
    # Nobody answered.
    assert await store.create_call(call("c_2", "r2", language="de", languages=["de"]))
    assert await store.finish("c_2", EndReason.NO_ANSWER, None, NOW + 90)
    # Queued for the organisation, answered by its agent, ended by the agent.
    assert await store.create_call(call("c_3", "r1", state=CallState.QUEUED, org="o1", queue="q1"))
    assert await store.reserve_agent_ring("c_3", "o1", "a1", NOW + 100, True)
    assert await store.assign("c_3", "a1", "Agent One", Role.AGENT, NOW + 101)
    await store.agent_answered("o1", "a1")
    assert await store.finish("c_3", EndReason.COMPLETED, Role.AGENT, NOW + 200)
    await store.agent_released("o1", "a1", NOW + 200, NOW + 215)
    await store.count_queue_outcome("o1", DAY, True, 1.5)
    await store.count_queue_outcome("o1", DAY, False, 30.0)
    await store.record_handle_time("o1", "q1", 99.0, 0.2)
    # Still open: the migration's read of the file ends it as interrupted.
    assert await store.create_call(call("c_4", "r2"))
    # Duty of care.
    await store.note_report("v1", "r1", NOW + 70, 90 * 86400.0)
    filed = [
        await store.add_case(
            Case(
                reason=reason,
                opened_at=NOW + 70,
                call_id="c_1",
                reporter=Party(id="r1", role=Role.RECIPIENT),
                reported=Party(id="v1", role=Role.VOLUNTEER),
            )
        )
        for reason in (ReportReason.ABUSIVE, ReportReason.UNSAFE)
    ]
    resolution = Resolution(action=CaseAction.SUSPEND, note="n", by="admin", at=NOW + 80, days=7)
    assert await store.resolve_case(filed[0].id, resolution)
    until = NOW + 7 * 86400
    await store.set_restriction(
        "v1",
        Restriction(
            kind=RestrictionKind.SUSPENDED,
            since=NOW + 80,
            until=until,
            message="Suspended.",
            by="admin",
        ),
    )
    await store.schedule("restriction_end|v1", until)
    for action, target in (
        (AuditAction.CASE_RESOLVE, filed[0].id),
        (AuditAction.USER_SUSPEND, "v1"),
    ):
        await store.append_audit(
            AuditEntry(at=NOW + 80, actor="admin", actor_role="admin", action=action, target=target)
        )
    await store.add_counts(DAY, {"all": Counts(created=3, answered=2, completed=2)})
    await store.add_counts(DAY, {"org:o1": Counts(created=1, answered=1)})
    await store.revoke_sessions("r2", NOW + 5)
    await store.circle_add("r1", "v1", NOW + 6)
    await store.put_invite("k_1", Invite(recipient_id="r1", created_at=NOW, expires_at=NOW + 3600))
    await store.put_invite("p_1", PROPOSAL)
    await store.set_mark("retention", NOW - 100)


PROPOSAL = Invite(recipient_id="r2", created_at=NOW, expires_at=NOW + 3600, helper_id="v1")


async def exported(store: Portable) -> list[Record]:
    return [r async for r in store.export_records()]


@pytest.mark.parametrize("hop", ["redis", "cluster"])
async def test_sqlite_to_redis_and_back_record_for_record(
    hop: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if hop == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        middle = server.url
    else:
        cluster: RedisClusterProcs = request.getfixturevalue("redis_cluster")
        cluster.flush()
        middle = cluster.url
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    source = SqliteStore(first, now=lambda: NOW)
    await fill(source)
    await source.close()

    there = await migrate(f"sqlite://{first}", middle)
    back = await migrate(middle, f"sqlite://{second}")
    assert there == back
    assert there["call"] == 4 and there["case"] == 2 and there["audit"] == 2
    assert there["profile"] == 5 and there["devices"] == 2 and there["feedback"] == 2

    a, b = SqliteStore(first, now=lambda: NOW), SqliteStore(second, now=lambda: NOW)
    redis_store = open_store(middle)
    try:
        records = await exported(a)
        assert all(there.values()), there  # every kind of record was there to move
        assert [r.kind for r in records].count("call") == 4
        assert await exported(b) == records
        assert isinstance(redis_store, Portable)
        assert await exported(redis_store) == records
        # Spot checks through the contract, on the file that made the round trip.
        for st in (b, redis_store):
            assert [c.id for c in await st.calls_of("r1")] == ["c_3", "c_1"]
            c4 = await st.get_call("c_4")
            assert c4 is not None and c4.end_reason is EndReason.FAILED
            v1 = await st.get_profile("v1")
            assert v1 is not None and v1.languages == ["fr", "en"] and v1.daily_ring_cap == 3
            r1 = await st.get_profile("r1")
            assert r1 is not None and r1.blocked == frozenset({"v2"})
            assert [d.id for d in await st.devices("v1")] == ["d_1", "d_2"]
            assert await st.circle("r1") == {"v1": NOW + 6}
            assert await st.circles_of("v1") == {"r1": NOW + 6}
            assert await st.proposals_for("v1", NOW) == [("p_1", PROPOSAL)]
            assert await st.has_devices("v2") and await st.is_on_duty("v1")
            cases = await st.cases(CaseQuery(), None, 10)
            assert [(c.id, c.seq) for c in cases] == [("case_2", 2), ("case_1", 1)]
            assert cases[1].resolution == resolution_of(records)
            audit = await st.audit(AuditQuery(), None, 10)
            assert [e.id for e in audit] == ["audit_2", "audit_1"]
            counts = (await st.day_counts([DAY]))[0]
            # The call left open was counted when the migration's read of the file ended it.
            assert counts["all"].v == Counts(created=4, answered=2, completed=2).v
            assert await st.revoked_before("r2") == NOW + 5
            assert await st.deadline("restriction_end|v1") == NOW + 7 * 86400
            assert [f.rating for f in await st.feedback_of("c_1")] == ["good", "bad"]
            agents = await st.agents("o1")
            assert [(x.user_id, x.missed, x.calls) for x in agents] == [("a1", 0, 1)]
            assert (await st.queue_day_stats("o1", DAY)).abandoned == 1
            assert await st.handle_time("o1", "q1") == 99.0
            assert await st.get_mark("retention") == NOW - 100
            # New records continue the sequences instead of reusing an id.
            case = await st.add_case(cases[0].model_copy(update={"id": "", "seq": 0}))
            assert case.seq == 3
        # A volunteer's answers still count for fairness after the move.
        for st in (b, redis_store):
            facts = {c.user_id: c.calls_30d for c in await st.candidates("fr", NOW + 3600)}
            assert facts == {"v1": 1}
    finally:
        await a.close()
        await b.close()
        await redis_store.close()


def resolution_of(records: list[Record]) -> Resolution | None:
    case = next(r.value for r in records if r.kind == "case" and r.key == ("case_1",))
    assert isinstance(case, Case)
    return case.resolution


async def filled(path: Path) -> None:
    store = SqliteStore(path, now=lambda: NOW)
    await fill(store)
    await store.close()


def test_the_command_prints_counts_and_refuses_a_store_that_is_not_empty(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_server.flush()
    first = tmp_path / "first.db"
    asyncio.run(filled(first))
    assert main(["migrate", "--from", f"sqlite://{first}", "--to", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "call         4" in out and "total" in out
    # Again into the same Redis: refused, nothing written.
    assert main(["migrate", "--from", f"sqlite://{first}", "--to", redis_server.url]) == 2
    err = capsys.readouterr().err
    assert "already holds records" in err and "Traceback" not in err
    # Into a file that holds records.
    assert main(["migrate", "--from", redis_server.url, "--to", f"sqlite://{first}"]) == 2
    assert "already holds records" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("memory://", "sqlite://{tmp}/x.db", "memory://"),
        ("sqlite://{tmp}/x.db", "memory://", "memory://"),
        ("sqlite://{tmp}/missing.db", "sqlite://{tmp}/y.db", "does not exist"),
        ("ftp://example.org", "sqlite://{tmp}/y.db", "unsupported store URL"),
        ("sqlite://", "sqlite://{tmp}/y.db", "names no file"),
        ("sqlite://{tmp}/x.db", "redis://127.0.0.1:{port}/0?timeout=0.5", "unreachable"),
        ("sqlite://{tmp}/x.db", "redis://127.0.0.1:{port}/0?colour=red", "colour"),
        ("redis+cluster://127.0.0.1:{port}?timeout=0.5", "sqlite://{tmp}/y.db", "reachable"),
        ("sqlite://{tmp}/x.db", "sqlite://{tmp}/x.db", "same store"),
        ("sqlite://{tmp}/x.db", "sqlite://{tmp}/notes.txt", "not a vabroker database"),
    ],
)
def test_bad_migrations_are_refused_with_a_message(
    tmp_path: Path,
    source: str,
    target: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(filled(tmp_path / "x.db"))
    (tmp_path / "notes.txt").write_text("not a database, just some text\n" * 100)
    port = free_port()
    args = [s.format(tmp=tmp_path, port=port) for s in (source, target)]
    assert main(["migrate", "--from", args[0], "--to", args[1]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_file_a_broker_has_open_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(filled(tmp_path / "x.db"))
    running = SqliteStore(tmp_path / "x.db")  # as a running broker holds it
    try:
        args = [
            "migrate",
            "--from",
            f"sqlite://{tmp_path}/x.db",
            "--to",
            f"sqlite://{tmp_path}/y.db",
        ]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "in use by another vabroker process" in err and "Traceback" not in err
    finally:
        asyncio.run(running.close())


@pytest.mark.parametrize("target", ["sqlite", "redis"])
async def test_a_pending_handover_is_imported_beside_the_call_it_replaces(
    target: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Open calls move in the order they were asked for: the reader's call, then the search
    that replaces it, which stays pending while that call is open and is the recipient's
    current call once it is not."""
    reader = call(
        "c_a",
        "r1",
        state=CallState.ASSIGNED,
        helper_id="a1",
        helper_role=Role.ASSISTANT,
        assigned_at=NOW + 1,
    )
    pending = call("c_h", "r1", requested_at=NOW + 2, replaces="c_a", reading="EXP 2026")
    outlived = call("c_h2", "r2", requested_at=NOW + 2, replaces="c_gone")

    async def records() -> AsyncIterator[Record]:
        for c in (reader, pending, outlived):
            yield Record("call", (c.id,), c)

    if target == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        store = open_store(server.url)
    else:
        store = SqliteStore(tmp_path / "handover.db", now=lambda: NOW)
    try:
        assert isinstance(store, Portable)
        assert await store.import_records(records()) == 3
        assert await store.current_call("r1") == "c_a" and await store.handover_of("r1") == "c_h"
        assert await store.current_call("a1") == "c_a"
        assert await store.current_call("r2") == "c_h2" and await store.handover_of("r2") is None
        moved = await store.get_call("c_h")
        assert moved is not None and moved.reading == "EXP 2026"
    finally:
        await store.close()
