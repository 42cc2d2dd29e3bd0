"""Moving the durable embedded store's records out and in (``Portable``, for
``vabroker migrate``).

The file is the truth (memory only holds its hot part), so export reads the file; import
writes the file in one transaction and then rebuilds memory from it, exactly as a start-up
does. Calls noted as interrupted (told to their parties at their next sign-in) are not
moved: they are a note to this store's users, not a record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from broker.model import Call, Feedback, Invite, Profile
from broker.moderation import AuditEntry, Case, Restriction
from broker.notify.devices import Device
from broker.orgs import AgentRecord, Org, QueueDayStats
from broker.store.base import Record, RecordKind

if TYPE_CHECKING:
    from broker.store.sqlite import SqliteStore


def _profile_json(profile: Profile) -> str:
    data = profile.model_dump(mode="json")
    data["ring_window"] = profile.ring_window.as_wire()  # the form its validator reads
    return json.dumps(data)


def _records(store: SqliteStore, kind: str) -> list[tuple[str, str]]:
    return sorted(store._records(kind))


# Record kinds kept in the key-value ``records`` table: how each value is read and written.
_LOAD: dict[str, Any] = {
    "profile": Profile.model_validate_json,
    "rung": lambda v: tuple(json.loads(v)),
    "duty": lambda v: True,
    "devices": lambda v: [Device.model_validate(d) for d in json.loads(v)],
    "org": Org.model_validate_json,
    "restriction": Restriction.model_validate_json,
    "reporters": lambda v: dict(json.loads(v)),
    "revoked": float,
    "day": json.loads,
    "timer": float,
    "mark": float,
}
_DUMP: dict[str, Any] = {
    "profile": _profile_json,
    "rung": lambda v: json.dumps(list(v)),
    "duty": lambda v: "1",
    "devices": lambda v: json.dumps([d.model_dump(mode="json") for d in v]),
    "org": lambda v: v.model_dump_json(),
    "restriction": lambda v: v.model_dump_json(),
    "reporters": json.dumps,
    "revoked": repr,
    "day": json.dumps,
    "timer": repr,
    "mark": repr,
}


async def export_sqlite(store: SqliteStore) -> AsyncIterator[Record]:
    db = store._db
    kind: RecordKind
    for kind in ("profile", "rung", "duty", "devices", "org"):
        for key, value in _records(store, kind):
            yield Record(kind, (key,), _LOAD[kind](value))
    for user_id, value in _records(store, "agent"):
        fields = json.loads(value)
        org_id = fields.pop("org")
        yield Record("agent", (org_id, user_id), AgentRecord(**fields))
    for key, value in _records(store, "queue_day"):
        org_id, day = json.loads(key)
        answered, abandoned, wait = json.loads(value)
        yield Record("queue_day", (org_id, day), QueueDayStats(answered, abandoned, wait))
    for key, value in _records(store, "handle"):
        org_id, queue_id = json.loads(key)
        yield Record("handle", (org_id, queue_id), float(value))
    rows = db.execute("SELECT body FROM calls ORDER BY end_seq IS NULL, end_seq, rowid")
    for (body,) in rows.fetchall():
        call = Call.model_validate_json(body)
        yield Record("call", (call.id,), call)
    history: dict[str, list[str]] = {}
    for user_id, call_id in db.execute("SELECT user_id, call_id FROM history ORDER BY seq"):
        history.setdefault(user_id, []).append(call_id)
    for user_id in sorted(history):
        yield Record("history", (user_id,), history[user_id])
    rows = db.execute("SELECT body FROM feedback ORDER BY call_id, user_id")
    for (body,) in rows.fetchall():
        fb = Feedback.model_validate_json(body)
        yield Record("feedback", (fb.call_id, fb.user_id), fb)
    for kind in ("restriction", "reporters"):
        for key, value in _records(store, kind):
            yield Record(kind, (key,), _LOAD[kind](value))
    for (body,) in db.execute("SELECT body FROM cases ORDER BY seq").fetchall():
        case = Case.model_validate_json(body)
        yield Record("case", (case.id,), case)
    for (body,) in db.execute("SELECT body FROM audit ORDER BY seq").fetchall():
        entry = AuditEntry.model_validate_json(body)
        yield Record("audit", (entry.id,), entry)
    for key, value in _records(store, "revoked"):
        yield Record("revoked", (key,), float(value))
    for key, value in _records(store, "circle"):
        recipient_id, helper_id = json.loads(key)
        yield Record("circle", (recipient_id, helper_id), float(value))
    for key, value in _records(store, "invite"):
        yield Record("invite", (key,), Invite.model_validate_json(value))
    for key, value in _records(store, "day"):
        yield Record("day", (key,), json.loads(value))
    timers = sorted(_records(store, "timer"), key=lambda kv: (float(kv[1]), kv[0]))
    for key, value in timers:
        yield Record("timer", (key,), float(value))
    for key, value in _records(store, "mark"):
        yield Record("mark", (key,), float(value))


async def import_sqlite(store: SqliteStore, records: AsyncIterable[Record]) -> int:
    from broker.store.sqlite import _agent_json

    db = store._db
    n = 0
    with store._tx():
        async for rec in records:
            n += 1
            k, v = rec.key, rec.value
            if rec.kind in _DUMP:
                store._put(rec.kind, k[0], _DUMP[rec.kind](v))
            elif rec.kind == "agent":
                store._put("agent", k[1], _agent_json(k[0], v))
            elif rec.kind == "queue_day":
                stats: QueueDayStats = v
                value = json.dumps([stats.answered, stats.abandoned, stats.wait_total_s])
                store._put("queue_day", json.dumps(list(k)), value)
            elif rec.kind == "handle":
                store._put("handle", json.dumps(list(k)), repr(float(v)))
            elif rec.kind == "circle":
                store._put("circle", json.dumps(list(k)), repr(float(v)))
            elif rec.kind == "invite":
                store._put("invite", k[0], v.model_dump_json())
            elif rec.kind == "call":
                # Calls arrive in the order they ended: they take their places in that order.
                store._save_call(v, ended=v.ended_at is not None)
            elif rec.kind == "history":
                db.executemany(
                    "INSERT INTO history (user_id, call_id) VALUES (?, ?)",
                    [(k[0], call_id) for call_id in v],
                )
            elif rec.kind == "feedback":
                db.execute(
                    "INSERT INTO feedback (call_id, user_id, body) VALUES (?, ?, ?)",
                    (k[0], k[1], v.model_dump_json()),
                )
            elif rec.kind == "case":
                store._save_case(v)
            elif rec.kind == "audit":
                db.execute("INSERT INTO audit VALUES (?, ?)", (v.seq, v.model_dump_json()))
            else:  # pragma: no cover - RecordKind is closed
                raise ValueError(f"unknown record kind {rec.kind!r}")
    store._load()
    return n
