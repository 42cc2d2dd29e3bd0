"""The durable embedded store: the memory store's structures, written through to SQLite.

One process, one file, no other service. The hot path is the memory store's: every read and
every decision (matching, first accept, ring budgets, queues) runs on the in-process structures
of ``MemoryStore`` exactly as there. What must outlive the process is written to an SQLite
file (standard library ``sqlite3``, WAL mode) *inside the same method*, before it returns: a
caller told that a write succeeded finds it there after a restart. Nothing is batched.

Durability, plainly: the file is opened with ``synchronous=NORMAL`` by default. A committed
write survives the process being killed (SIGKILL, a crash, an out-of-memory kill) because it is
in the write-ahead log before the method returns; after a power cut or a kernel crash the last
writes since the latest checkpoint (SQLite checkpoints every ~1,000 pages) may be lost, which is
Redis's ``appendfsync everysec`` class of promise. ``sqlite:///path.db?synchronous=full``
syncs every commit to the disk as well (every acknowledged write survives a power cut), at the
cost of one fsync per write.

SQLite is called synchronously on the event loop thread: a write is tens of microseconds, and
keeping it inside the method keeps every method one atomic step, as the contract needs. A write
the file refuses (a full disk) raises out of the method after memory has changed: the process
should then be restarted, and it comes back as the file last was.

What is durable: profiles (with blocks), duty, push devices, organisations (queues' settings),
agents' records, calls (on creation, assignment, media, overflow and end), each party's history,
feedback, queue day figures and handle times, ring budgets (a volunteer's rings today and when
they were last rung), restrictions, reports, cases, the audit log, sign-in revocations, the day
counters, sweep marks, and timers (suspensions' ends, the retention sweep; a call's timers fire
harmlessly after a restart because the call has ended by then). Erasure and scrubbing rewrite
the records they change.

What is not (it has no meaning once the process is gone): connections, rings in flight and the
record of pushes sent for them, queue positions of open calls, rate-limit windows, and resume
tickets (the sessions they resume are gone).

On start the in-memory indexes are rebuilt from the file. Calls still open in the file were
interrupted by a crash or a kill: they end with ``EndReason.FAILED`` and no ``ended_by``, at the
time of the restart, are filed in both parties' history and counted in the day's statistics;
each party is sent ``call.ended`` (reason ``failed``, no ``by``) when they next sign in
(``take_interrupted``, the ``RecoveringStore`` extension).

Memory stays bounded: an ended call leaves memory ``keep_ended_s`` after it ended (default ten
minutes); ``get_call`` reads it from the file then, and history (``calls_of``), statistics
(``ended_calls``, ``ended_between``) and feedback are always read from the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.model import (
    Call,
    CallState,
    EndReason,
    Feedback,
    Invite,
    Profile,
    Role,
    lean,
    primary_language,
)
from broker.moderation import AuditEntry, Case, Resolution, Restriction, scrubbed_call
from broker.notify.devices import Device
from broker.orgs import AgentRecord, AgentStateName, Org, QueueDayStats
from broker.outbox import WebhookDelivery
from broker.stats import Counts, counts_of, day_of, scopes_of
from broker.store.base import Assignment, Finish, Handover, Record
from broker.store.memory import THIRTY_DAYS, MemoryStore
from broker.store.sqlite_file import (
    SCHEMA,
    SCHEMA_VERSION,
    NotABrokerFile,
    lock_file,
    sqlite_path,
)
from broker.store.sqlite_portable import export_sqlite, import_sqlite

KEEP_ENDED_S = 600.0

# Kinds of the key-value ``records`` table.
PROFILE, DUTY, DEVICES, RUNG, TIMER, REVOKED = (
    "profile",
    "duty",
    "devices",
    "rung",
    "timer",
    "revoked",
)
ORG, AGENT, QUEUE_DAY, HANDLE = "org", "agent", "queue_day", "handle"
RESTRICTION, REPORTERS, DAY, MARK = "restriction", "reporters", "day", "mark"
INTERRUPTED = "interrupted"  # user -> calls ended on start-up they have not been told of
WEBHOOK = "webhook"  # delivery id -> the delivery waiting for its next attempt
CIRCLE, INVITE = "circle", "invite"  # [recipient, helper] -> since; key -> Invite


def _key(*parts: str) -> str:
    return json.dumps(parts)


def _agent_json(org_id: str, record: AgentRecord) -> str:
    return json.dumps(
        {
            "org": org_id,
            "user_id": record.user_id,
            "state": record.state,
            "display_name": record.display_name,
            "since": record.since,
            "idle_since": record.idle_since,
            "wrapup_until": record.wrapup_until,
            "missed": record.missed,
            "calls": record.calls,
        }
    )


class SqliteStore(MemoryStore):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        keep_ended_s: float = KEEP_ENDED_S,
        recover: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the file and rebuild the in-memory state from it. With ``recover``
        (always, but in tests of the file itself) calls left open are ended as interrupted."""
        super().__init__()
        self.path = str(path)
        self.keep_ended_s = keep_ended_s
        self._now = now
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_file(self.path)
        self._depth = 0
        self._end_seq = 0
        self._interrupted: dict[str, list[str]] = {}
        self._recently_ended: deque[tuple[float, str]] = deque()
        self._closed = False
        self.recovered: list[str] = []
        # Autocommit: a single statement is its own transaction; several go in ``_tx``.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._create_schema()
            self._load()
            if recover:
                self.recovered = self._recover()
        except sqlite3.DatabaseError as exc:
            self._release()
            raise NotABrokerFile(f"{self.path} is not a vabroker database ({exc})") from None
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        self._closed = True
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path, synchronous = sqlite_path(url)
        return cls(path, synchronous=synchronous)

    # --- plumbing --------------------------------------------------------------------------
    def _create_schema(self) -> None:
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise NotABrokerFile(
                f"{self.path} was written by a newer vabroker (schema {row[0]}, this one "
                f"reads {SCHEMA_VERSION}): upgrade vabroker, or restore an older backup"
            )

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction for several statements (nested uses join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def _put(self, kind: str, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (kind, key, value))

    def _delete(self, kind: str, key: str) -> None:
        self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    def _records(self, kind: str) -> list[tuple[str, str]]:
        rows = self._db.execute("SELECT key, value FROM records WHERE kind = ?", (kind,))
        return list(rows.fetchall())

    def _save_call(self, call: Call, ended: bool = False) -> None:
        """Write a call; ``ended`` when it has just ended (it takes the next place in the order
        calls ended; any other write keeps the place it has)."""
        row = (
            call.id,
            call.state.value,
            call.helper_id,
            call.assigned_at,
            call.ended_at,
            call.model_dump_json(),
        )
        if ended:
            self._end_seq += 1
            self._db.execute(
                "INSERT OR REPLACE INTO calls (id, state, helper_id, assigned_at, ended_at, "
                "body, end_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*row, self._end_seq),
            )
            return
        self._db.execute(
            "INSERT INTO calls (id, state, helper_id, assigned_at, ended_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
            "helper_id = excluded.helper_id, assigned_at = excluded.assigned_at, "
            "ended_at = excluded.ended_at, body = excluded.body",
            row,
        )

    def _stored_call(self, call_id: str) -> Call | None:
        row = self._db.execute("SELECT body FROM calls WHERE id = ?", (call_id,)).fetchone()
        return Call.model_validate_json(row[0]) if row else None

    def _save_profile(self, user_id: str) -> None:
        profile = self._profiles.get(user_id)
        if profile is None:
            self._delete(PROFILE, user_id)
        else:
            data = profile.model_dump(mode="json")
            data["ring_window"] = profile.ring_window.as_wire()  # the form its validator reads
            self._put(PROFILE, user_id, json.dumps(data))

    def _save_devices(self, user_id: str) -> None:
        mine = self._device_list.get(user_id)
        if mine:
            self._put(DEVICES, user_id, json.dumps([d.model_dump(mode="json") for d in mine]))
        else:
            self._delete(DEVICES, user_id)

    def _save_rung(self, user_id: str) -> None:
        day, count = self._ring_count.get(user_id, ("", 0))
        self._put(RUNG, user_id, json.dumps([day, count, self._last_rung.get(user_id, 0.0)]))

    def _save_agent(self, user_id: str) -> None:
        org_id = self._agent_org.get(user_id)
        record = self._agents.get(org_id, {}).get(user_id) if org_id is not None else None
        if org_id is None or record is None:
            self._delete(AGENT, user_id)
        else:
            self._put(AGENT, user_id, _agent_json(org_id, record))

    def _save_reporters(self, reported_id: str) -> None:
        reporters = self._reporters.get(reported_id)
        if reporters:
            self._put(REPORTERS, reported_id, json.dumps(reporters))
        else:
            self._delete(REPORTERS, reported_id)

    def _save_case(self, case: Case) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO cases VALUES (?, ?)", (case.seq, case.model_dump_json())
        )

    # --- start-up ----------------------------------------------------------------------------
    def _load(self) -> None:
        """Rebuild the memory store's structures from the file."""
        for user_id, value in self._records(PROFILE):
            self._profiles[user_id] = lean(Profile.model_validate_json(value))
        for user_id, _ in self._records(DUTY):
            self._on_duty.add(user_id)
        for user_id in self._on_duty:
            self._index(user_id)
        for user_id, value in self._records(DEVICES):
            devices = [Device.model_validate(d) for d in json.loads(value)]
            self._device_list[user_id] = devices
            self._devices[user_id] = len(devices)
            for d in devices:
                self._address_owner[d.address] = user_id
        for user_id, value in self._records(RUNG):
            day, count, last_rung = json.loads(value)
            if day:
                self._ring_count[user_id] = (day, count)
            self._last_rung[user_id] = last_rung
        for key, value in self._records(TIMER):
            self._timers[key] = float(value)
        self._timer_heap = [(at, key) for key, at in self._timers.items()]
        self._timer_heap.sort()
        for user_id, value in self._records(REVOKED):
            self._revoked[user_id] = float(value)
        for delivery_id, value in self._records(WEBHOOK):
            self._webhooks[delivery_id] = WebhookDelivery.from_json(value)
        for org_id, value in self._records(ORG):
            self._orgs[org_id] = Org.model_validate_json(value)
        for user_id, value in self._records(AGENT):
            fields = json.loads(value)
            org_id = fields.pop("org")
            self._agent_org[user_id] = org_id
            self._agents[org_id][user_id] = AgentRecord(**fields)
        for key, value in self._records(QUEUE_DAY):
            org_id, day = json.loads(key)
            answered, abandoned, wait = json.loads(value)
            self._queue_days[(org_id, day)] = QueueDayStats(answered, abandoned, wait)
        for key, value in self._records(HANDLE):
            org_id, queue_id = json.loads(key)
            self._handle[(org_id, queue_id)] = float(value)
        for user_id, value in self._records(RESTRICTION):
            self._restrictions[user_id] = Restriction.model_validate_json(value)
        for user_id, value in self._records(REPORTERS):
            self._reporters[user_id] = dict(json.loads(value))
        for day, value in self._records(DAY):
            self._days[day] = {scope: Counts(v) for scope, v in json.loads(value).items()}
        for user_id, value in self._records(INTERRUPTED):
            self._interrupted[user_id] = list(json.loads(value))
        for name, value in self._records(MARK):
            self._marks[name] = float(value)
        for key, value in self._records(CIRCLE):
            recipient_id, helper_id = json.loads(key)
            self._circle.setdefault(recipient_id, {})[helper_id] = float(value)
            self._circles_of.setdefault(helper_id, {})[recipient_id] = float(value)
        for key, value in self._records(INVITE):
            self._put_invite_now(key, Invite.model_validate_json(value))
        for (body,) in self._db.execute("SELECT body FROM cases ORDER BY seq"):
            case = Case.model_validate_json(body)
            self._cases[case.seq] = case
            self._case_ids[case.id] = case.seq
        for (body,) in self._db.execute("SELECT body FROM audit ORDER BY seq"):
            self._audit.append(AuditEntry.model_validate_json(body))
        self._end_seq = self._db.execute("SELECT COALESCE(MAX(end_seq), 0) FROM calls").fetchone()[
            0
        ]
        handovers: list[Call] = []
        for (body,) in self._db.execute("SELECT body FROM calls WHERE ended_at IS NULL"):
            call = Call.model_validate_json(body)
            self._calls[call.id] = lean(call)
            if call.replaces is not None:
                handovers.append(call)
            else:
                self._open_call[call.recipient_id] = call.id
            if call.helper_id is not None and call.state is CallState.ASSIGNED:
                self._open_call[call.helper_id] = call.id
        # A handover is still pending while it searches and the call it replaces is open;
        # answered, or outliving that call, it is the recipient's current call.
        for call in handovers:
            replaced = self._calls.get(call.replaces or "")
            if call.state is not CallState.ASSIGNED and replaced is not None:
                self._handover[call.recipient_id] = call.id
            else:
                self._open_call[call.recipient_id] = call.id
        # Fairness facts come from the calls themselves: who answered what, and when.
        horizon = self._now() - THIRTY_DAYS
        rows = self._db.execute(
            "SELECT helper_id, assigned_at FROM calls WHERE helper_id IS NOT NULL "
            "AND assigned_at IS NOT NULL ORDER BY assigned_at"
        )
        for helper_id, assigned_at in rows:
            self._last_call[helper_id] = assigned_at
            if assigned_at < horizon:
                continue
            self._answered[helper_id].append(assigned_at)
            profile = self._profiles.get(helper_id)
            if profile is not None and profile.role is Role.VOLUNTEER:
                for tag in profile.languages:
                    helpers = self._helpers[primary_language(tag)]
                    helpers.pop(helper_id, None)
                    helpers[helper_id] = None

    def _recover(self) -> list[str]:
        """End every call the file holds open: it was interrupted by a crash, a kill or a stop
        that did not drain. Returns their ids."""
        now = self._now()
        ended: list[str] = []
        for call_id in sorted(self._calls, key=lambda c: self._calls[c].requested_at):
            call = self._calls[call_id]
            if not call.state.can_become(CallState.ENDED):
                continue
            # One transaction per call: a crash during recovery leaves each call either
            # untouched (recovered at the next start) or ended, counted and noted.
            with self._tx():
                done = self._finish_now(call_id, EndReason.FAILED, None, now)
                if done is None:
                    continue
                for party in (done.call.recipient_id, done.call.helper_id):
                    if party is not None:
                        self._interrupted.setdefault(party, []).append(call_id)
                        self._put(INTERRUPTED, party, json.dumps(self._interrupted[party]))
                c = counts_of(done.call)
                scopes = {s: c for s in scopes_of(done.call)}
                self._add_counts_now(day_of(done.call.requested_at), scopes)
            ended.append(call_id)
        return ended

    # --- lifecycle -----------------------------------------------------------------------------
    async def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        if not self._closed:
            self._release()

    # --- profiles and availability ---------------------------------------------------------
    async def put_profile(self, profile: Profile) -> None:
        await super().put_profile(profile)
        self._save_profile(profile.user_id)

    async def block(self, user_id: str, other_id: str) -> None:
        await super().block(user_id, other_id)
        if user_id in self._profiles:
            self._save_profile(user_id)

    async def set_on_duty(self, user_id: str, on_duty: bool) -> None:
        await super().set_on_duty(user_id, on_duty)
        if on_duty:
            self._put(DUTY, user_id, "1")
        else:
            self._delete(DUTY, user_id)

    # --- devices -----------------------------------------------------------------------------
    async def add_device(self, device: Device) -> Device:
        owner = self._address_owner.get(device.address)
        stored = await super().add_device(device)
        with self._tx():
            if owner is not None and owner != device.user_id:
                self._save_devices(owner)
            self._save_devices(device.user_id)
        return stored

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        gone = await super().remove_device(user_id, device_id)
        if gone:
            self._save_devices(user_id)
        return gone

    # --- calls -------------------------------------------------------------------------------
    async def create_call(self, call: Call) -> bool:
        created = await super().create_call(call)
        if created:
            self._save_call(self._calls[call.id])
        return created

    async def open_handover(self, call: Call) -> bool:
        opened = await super().open_handover(call)
        if opened:
            self._save_call(self._calls[call.id])
        return opened

    async def get_call(self, call_id: str) -> Call | None:
        call = self._calls.get(call_id)
        if call is not None:
            return call.model_copy(deep=True)
        return self._stored_call(call_id)

    async def update_call(self, call_id: str, **fields: Any) -> None:
        if call_id in self._calls:
            await super().update_call(call_id, **fields)
            self._save_call(self._calls[call_id])
            return
        await super().update_call(call_id, **fields)  # refuses locked fields, as everywhere
        stored = self._stored_call(call_id)
        if stored is not None:
            self._save_call(stored.model_copy(update=fields))

    async def assign(
        self, call_id: str, helper_id: str, helper_name: str, helper_role: Role, now: float
    ) -> Assignment | None:
        done = await super().assign(call_id, helper_id, helper_name, helper_role, now)
        if done is not None:
            self._save_call(done.call)
        return done

    async def finish(
        self, call_id: str, reason: EndReason, by: Role | None, now: float
    ) -> Finish | None:
        return self._finish_now(call_id, reason, by, now)

    def _finish_now(
        self, call_id: str, reason: EndReason, by: Role | None, now: float
    ) -> Finish | None:
        # MemoryStore.finish awaits nothing: drive it to completion synchronously, so that
        # start-up recovery can use it too.
        coro = MemoryStore.finish(self, call_id, reason, by, now)
        try:
            coro.send(None)
        except StopIteration as stop:
            done: Finish | None = stop.value
        else:  # pragma: no cover - MemoryStore.finish never suspends
            raise RuntimeError("MemoryStore.finish suspended")
        if done is None:
            return None
        call = done.call
        # History lives in the file: the memory store's lists would grow without bound.
        self._ended.pop()
        parties = [p for p in (call.recipient_id, call.helper_id) if p is not None]
        for party in parties:
            self._history[party].pop()
            if not self._history[party]:
                del self._history[party]
        with self._tx():
            self._save_call(call, ended=True)
            self._db.executemany(
                "INSERT INTO history (user_id, call_id) VALUES (?, ?)",
                [(party, call_id) for party in parties],
            )
        self._recently_ended.append((now, call_id))
        self._evict(now)
        return done

    def _evict(self, now: float) -> None:
        old = self._recently_ended
        while old and old[0][0] < now - self.keep_ended_s:
            _, call_id = old.popleft()
            call = self._calls.get(call_id)
            if call is not None and call.state is CallState.ENDED:
                del self._calls[call_id]

    async def mark_media(self, call_id: str, now: float) -> bool:
        if call_id in self._calls:
            marked = await super().mark_media(call_id, now)
            if marked:
                self._save_call(self._calls[call_id])
            return marked
        stored = self._stored_call(call_id)
        if stored is None or stored.media_at is not None:
            return False
        self._save_call(stored.model_copy(update={"media_at": now}))
        return True

    async def hand_to_volunteers(self, call_id: str, now: float) -> Handover | None:
        done = await super().hand_to_volunteers(call_id, now)
        if done is not None:
            self._save_call(done.call)
        return done

    async def escalate(
        self, call_id: str, org_id: str, queue_id: str, now: float
    ) -> Handover | None:
        done = await super().escalate(call_id, org_id, queue_id, now)
        if done is not None:
            self._save_call(done.call)
        return done

    # --- rings -------------------------------------------------------------------------------
    async def reserve_ring(
        self, call_id: str, user_id: str, day: str, cap: int, now: float
    ) -> bool:
        reserved = await super().reserve_ring(call_id, user_id, day, cap, now)
        if reserved:
            self._save_rung(user_id)
        return reserved

    async def reserve_agent_ring(
        self, call_id: str, org_id: str, user_id: str, now: float, exclusive: bool
    ) -> bool:
        reserved = await super().reserve_agent_ring(call_id, org_id, user_id, now, exclusive)
        if reserved:
            self._save_rung(user_id)
        return reserved

    # --- feedback (in the file only: it is read per call, rarely) ------------------------------
    async def add_feedback(self, feedback: Feedback) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO feedback (call_id, user_id, body) VALUES (?, ?, ?)",
            (feedback.call_id, feedback.user_id, feedback.model_dump_json()),
        )
        return cursor.rowcount == 1

    async def feedback_of(self, call_id: str) -> list[Feedback]:
        rows = self._db.execute(
            "SELECT body FROM feedback WHERE call_id = ? ORDER BY seq", (call_id,)
        )
        return [Feedback.model_validate_json(body) for (body,) in rows]

    # --- timers ------------------------------------------------------------------------------
    async def schedule(self, key: str, at: float) -> None:
        await super().schedule(key, at)
        self._put(TIMER, key, repr(at))

    async def unschedule(self, *keys: str) -> None:
        had = [key for key in keys if key in self._timers]
        await super().unschedule(*keys)
        with self._tx():
            for key in had:
                self._delete(TIMER, key)

    async def claim_due(self, now: float, limit: int = 100) -> list[str]:
        due = await super().claim_due(now, limit)
        if due:
            with self._tx():
                for key in due:
                    self._delete(TIMER, key)
        return due

    # --- webhook deliveries: kept in the file, so that a restart resumes them ------------------
    async def add_webhook(self, delivery: WebhookDelivery) -> None:
        await super().add_webhook(delivery)
        self._put(WEBHOOK, delivery.id, delivery.to_json())

    async def claim_webhooks(
        self, now: float, lease_s: float, limit: int = 50
    ) -> list[WebhookDelivery]:
        claimed = await super().claim_webhooks(now, lease_s, limit)
        if claimed:
            with self._tx():
                for delivery in claimed:
                    self._put(WEBHOOK, delivery.id, delivery.to_json())
        return claimed

    async def retry_webhook(self, delivery: WebhookDelivery) -> bool:
        kept = await super().retry_webhook(delivery)
        if kept:
            self._put(WEBHOOK, delivery.id, delivery.to_json())
        return kept

    async def drop_webhook(self, delivery_id: str) -> bool:
        dropped = await super().drop_webhook(delivery_id)
        if dropped:
            self._delete(WEBHOOK, delivery_id)
        return dropped

    # --- calls ended by a restart (``RecoveringStore``) ----------------------------------------
    async def take_interrupted(self, user_id: str) -> list[str]:
        calls = self._interrupted.pop(user_id, [])
        if calls:
            self._delete(INTERRUPTED, user_id)
        return calls

    # --- sign-in revocation --------------------------------------------------------------------
    async def revoke_sessions(self, user_id: str, before: float) -> float:
        latest = await super().revoke_sessions(user_id, before)
        self._put(REVOKED, user_id, repr(latest))
        return latest

    # --- history (from the file) ---------------------------------------------------------------
    def _calls_by_id(self, ids: list[str]) -> list[Call]:
        out: list[Call] = []
        for call_id in ids:
            call = self._calls.get(call_id)
            if call is not None:
                out.append(call.model_copy(deep=True))
            else:
                stored = self._stored_call(call_id)
                if stored is not None:
                    out.append(stored)
        return out

    async def calls_of(self, user_id: str, limit: int = 1000) -> list[Call]:
        rows = self._db.execute(
            "SELECT c.body FROM history h JOIN calls c ON c.id = h.call_id "
            "WHERE h.user_id = ? ORDER BY h.seq DESC LIMIT ?",
            (user_id, limit),
        )
        return [Call.model_validate_json(body) for (body,) in rows]

    async def ended_calls(self, since: float, until: float) -> list[Call]:
        rows = self._db.execute(
            "SELECT body FROM calls WHERE ended_at >= ? AND ended_at < ? ORDER BY end_seq",
            (since, until),
        )
        return [Call.model_validate_json(body) for (body,) in rows]

    async def ended_between(
        self, since: float, until: float, limit: int
    ) -> list[tuple[str, float]]:
        rows = self._db.execute(
            "SELECT id, ended_at FROM calls WHERE ended_at >= ? AND ended_at < ? "
            "ORDER BY end_seq LIMIT ?",
            (since, until, limit),
        )
        return [(call_id, ended_at) for call_id, ended_at in rows]

    # --- organisations, queues and agents --------------------------------------------------------
    async def put_org(self, org: Org) -> None:
        await super().put_org(org)
        self._put(ORG, org.id, org.model_dump_json())

    async def set_agent_state(
        self,
        org_id: str,
        user_id: str,
        state: AgentStateName,
        now: float,
        display_name: str | None = None,
    ) -> AgentRecord:
        record = await super().set_agent_state(org_id, user_id, state, now, display_name)
        self._save_agent(user_id)
        return record

    async def agent_missed(self, org_id: str, user_id: str) -> int:
        missed = await super().agent_missed(org_id, user_id)
        self._save_agent(user_id)
        return missed

    async def agent_answered(self, org_id: str, user_id: str) -> None:
        await super().agent_answered(org_id, user_id)
        self._save_agent(user_id)

    async def agent_released(
        self, org_id: str, user_id: str, now: float, wrapup_until: float
    ) -> None:
        await super().agent_released(org_id, user_id, now, wrapup_until)
        self._save_agent(user_id)

    async def count_queue_outcome(
        self, org_id: str, day: str, answered: bool, wait_s: float
    ) -> None:
        await super().count_queue_outcome(org_id, day, answered, wait_s)
        stats = self._queue_days[(org_id, day)]
        value = json.dumps([stats.answered, stats.abandoned, stats.wait_total_s])
        self._put(QUEUE_DAY, _key(org_id, day), value)

    async def record_handle_time(
        self, org_id: str, queue_id: str, seconds: float, weight: float
    ) -> float:
        average = await super().record_handle_time(org_id, queue_id, seconds, weight)
        self._put(HANDLE, _key(org_id, queue_id), repr(average))
        return average

    # --- duty of care ----------------------------------------------------------------------------
    async def set_restriction(self, user_id: str, restriction: Restriction) -> None:
        await super().set_restriction(user_id, restriction)
        self._put(RESTRICTION, user_id, restriction.model_dump_json())

    async def clear_restriction(self, user_id: str) -> Restriction | None:
        gone = await super().clear_restriction(user_id)
        if gone is not None:
            self._delete(RESTRICTION, user_id)
        return gone

    async def note_report(
        self, reported_id: str, reporter_id: str, at: float, window_s: float
    ) -> int:
        count = await super().note_report(reported_id, reporter_id, at, window_s)
        self._save_reporters(reported_id)
        return count

    async def add_case(self, case: Case) -> Case:
        filed = await super().add_case(case)
        self._save_case(filed)
        return filed

    async def resolve_case(self, case_id: str, resolution: Resolution) -> Case | None:
        resolved = await super().resolve_case(case_id, resolution)
        if resolved is not None:
            self._save_case(resolved)
        return resolved

    async def append_audit(self, entry: AuditEntry) -> AuditEntry:
        appended = await super().append_audit(entry)
        self._db.execute(
            "INSERT INTO audit VALUES (?, ?)", (appended.seq, appended.model_dump_json())
        )
        return appended

    # --- statistics --------------------------------------------------------------------------------
    async def add_counts(self, day: str, counts: Mapping[str, Counts]) -> None:
        self._add_counts_now(day, counts)

    def _add_counts_now(self, day: str, counts: Mapping[str, Counts]) -> None:
        scopes = self._days.setdefault(day, {})
        for scope, c in counts.items():
            scopes.setdefault(scope, Counts()).add(c)
        self._put(DAY, day, json.dumps({scope: c.v for scope, c in scopes.items()}))

    async def set_mark(self, name: str, value: float) -> None:
        await super().set_mark(name, value)
        self._put(MARK, name, repr(value))

    # --- people's data -----------------------------------------------------------------------------
    # --- trusted circles (kept in the file) -----------------------------------------------------
    async def circle_add(self, recipient_id: str, helper_id: str, now: float) -> bool:
        added = await super().circle_add(recipient_id, helper_id, now)
        if added:
            self._put(CIRCLE, _key(recipient_id, helper_id), repr(now))
        return added

    async def circle_remove(self, recipient_id: str, helper_id: str) -> bool:
        removed = await super().circle_remove(recipient_id, helper_id)
        if removed:
            self._delete(CIRCLE, _key(recipient_id, helper_id))
        return removed

    async def put_invite(self, key: str, invite: Invite) -> None:
        await super().put_invite(key, invite)
        self._put(INVITE, key, invite.model_dump_json())

    async def take_invite(self, key: str, helper_id: str, now: float) -> Invite | None:
        taken = await super().take_invite(key, helper_id, now)
        if key not in self._invites:
            self._delete(INVITE, key)  # used, or found expired
        return taken

    async def erase_user(self, user_id: str, pseudonym: str, hit_keys: list[str]) -> None:
        uid = user_id
        circle_keys = [_key(uid, h) for h in self._circle.get(uid, {})]
        circle_keys += [_key(r, uid) for r in self._circles_of.get(uid, {})]
        invite_keys = [k for k, i in self._invites.items() if uid in (i.recipient_id, i.helper_id)]
        blockers = [p.user_id for p in self._profiles.values() if uid in p.blocked]
        timers = [k for k in self._timers if uid in k.split("|")[1:]]
        cases = [seq for seq, case in self._cases.items() if case.involves(uid)]
        audit_before = list(self._audit)
        history = [
            call_id
            for (call_id,) in self._db.execute(
                "SELECT call_id FROM history WHERE user_id = ? ORDER BY seq", (uid,)
            )
        ]
        await super().erase_user(uid, pseudonym, hit_keys)
        with self._tx():
            for call_id in history:
                await self.scrub_call(call_id, {uid: pseudonym})
            self._db.execute("DELETE FROM history WHERE user_id = ?", (uid,))
            self._interrupted.pop(uid, None)
            for kind in (
                PROFILE,
                DUTY,
                DEVICES,
                RUNG,
                AGENT,
                RESTRICTION,
                REVOKED,
                REPORTERS,
                INTERRUPTED,
            ):
                self._delete(kind, uid)
            for blocker in blockers:
                self._save_profile(blocker)
            for key in circle_keys:
                self._delete(CIRCLE, key)
            for key in invite_keys:
                self._delete(INVITE, key)
            for key in timers:
                self._delete(TIMER, key)
            if pseudonym in self._restrictions:
                self._put(RESTRICTION, pseudonym, self._restrictions[pseudonym].model_dump_json())
            if pseudonym in self._revoked:
                self._put(REVOKED, pseudonym, repr(self._revoked[pseudonym]))
            for reported in self._reporters:
                self._save_reporters(reported)
            for seq in cases:
                self._save_case(self._cases[seq])
            for before, after in zip(audit_before, self._audit, strict=True):
                if before != after:
                    self._db.execute(
                        "UPDATE audit SET body = ? WHERE seq = ?",
                        (after.model_dump_json(), after.seq),
                    )

    async def scrub_call(self, call_id: str, pseudonyms: Mapping[str, str]) -> None:
        with self._tx():
            if call_id in self._calls:
                await super().scrub_call(call_id, pseudonyms)
                self._save_call(self._calls[call_id])
            else:
                stored = self._stored_call(call_id)
                if stored is not None:
                    self._save_call(scrubbed_call(stored, pseudonyms))
            rows = self._db.execute(
                "SELECT seq, body FROM feedback WHERE call_id = ?", (call_id,)
            ).fetchall()
            for seq, body in rows:
                fb = Feedback.model_validate_json(body)
                if fb.user_id in pseudonyms:
                    fb = fb.model_copy(update={"user_id": pseudonyms[fb.user_id], "comment": None})
                    self._db.execute(
                        "UPDATE feedback SET user_id = ?, body = ? WHERE seq = ?",
                        (fb.user_id, fb.model_dump_json(), seq),
                    )

    # --- migration (``Portable``) ------------------------------------------------------------------
    async def export_records(self) -> AsyncIterator[Record]:
        async for record in export_sqlite(self):
            yield record

    async def import_records(self, records: AsyncIterable[Record]) -> int:
        return await import_sqlite(self, records)

    # --- checks ---------------------------------------------------------------------------------
    def durable_state(self) -> dict[str, Any]:
        """Everything this store keeps in memory that the file must give back on a reopen
        (open calls and recent ones; not connections, rings in flight, queues or resume
        tickets). Two stores over the same file, one before closing and one after reopening
        it without recovery, compare equal: the contract tests check exactly that."""
        agents = {org: dict(records) for org, records in self._agents.items() if records}
        return {
            "profiles": dict(self._profiles),
            "on_duty": set(self._on_duty),
            "devices": {u: list(ds) for u, ds in self._device_list.items()},
            "address_owner": dict(self._address_owner),
            "ring_count": dict(self._ring_count),
            "last_rung": dict(self._last_rung),
            "calls": {c: call for c, call in self._calls.items() if call.ended_at is None},
            "open_call": dict(self._open_call),
            "handover": dict(self._handover),
            "timers": dict(self._timers),
            "revoked": dict(self._revoked),
            "orgs": dict(self._orgs),
            "agents": agents,
            "agent_org": dict(self._agent_org),
            "queue_days": dict(self._queue_days),
            "handle": dict(self._handle),
            "restrictions": dict(self._restrictions),
            "reporters": {u: dict(r) for u, r in self._reporters.items() if r},
            "cases": dict(self._cases),
            "audit": list(self._audit),
            "days": {d: {s: c.v for s, c in sc.items()} for d, sc in self._days.items()},
            "marks": dict(self._marks),
            "interrupted": {u: list(c) for u, c in self._interrupted.items()},
            "webhooks": dict(self._webhooks),
            "circle": {r: dict(m) for r, m in self._circle.items()},
            "circles_of": {h: dict(m) for h, m in self._circles_of.items()},
            "invites": dict(self._invites),
        }
