"""Moving the Redis store's records out and in (``Portable``, for ``vabroker migrate``).

Export walks the documented key layout (``broker.store.redis``, ``broker.store.redis_safety``)
with SCAN; on a Redis Cluster redis-py's ``scan_iter`` visits every primary. Import writes each
record as it was: through the store's own methods where they keep what they are given
(profiles, duty, devices, organisations, restrictions, revocations, counters, timers, marks), and
straight into the layout where a contract method would make a new record instead (calls with
their end, history, feedback, agents, ring budgets, cases and the audit log with their ids and
sequence numbers).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING

from broker.model import Call, CallState, Feedback, Invite, Profile
from broker.moderation import AuditEntry, Case, Restriction
from broker.orgs import AgentRecord, Org, QueueDayStats
from broker.stats import Counts
from broker.store.base import Record
from broker.store.redis_common import agent_record, call_key, user_key

if TYPE_CHECKING:
    from broker.store.redis import RedisStore

_CALL_TAGS_NOT = ("u:", "o:", "idx:", "cases}", "audit}", "stats}")


def _org(org_id: str) -> str:
    return "vb:{o:" + org_id + "}"


async def _scan(store: RedisStore, pattern: str) -> list[str]:
    return sorted({str(k) async for k in store.r.scan_iter(match=pattern, count=500)})


async def export_redis(store: RedisStore) -> AsyncIterator[Record]:
    r = store.r
    users = [
        k[len("vb:{u:") : -1]
        for k in await _scan(store, "vb:{u:*}")
        if k.endswith("}") and "}" not in k[len("vb:{u:") : -1]
    ]
    hashes = {u: await r.hgetall(user_key(u)) for u in users}
    for u in users:
        h = hashes[u]
        if "profile" in h:
            profile = Profile.model_validate_json(h["profile"])
            blocked = await r.smembers(user_key(u) + ":blocked")
            yield Record(
                "profile", (u,), profile.model_copy(update={"blocked": frozenset(blocked)})
            )
    for u in users:
        h = hashes[u]
        if "rday" in h or "last_rung" in h:
            value = (h.get("rday", ""), int(h.get("rcount", 0)), float(h.get("last_rung", 0)))
            yield Record("rung", (u,), value)
    for u in users:
        if hashes[u].get("duty") == "1":
            yield Record("duty", (u,), True)
    for u in users:
        devices = await store.devices(u)
        if devices:
            yield Record("devices", (u,), devices)
    org_ids = sorted(await r.smembers("vb:orgs"))
    for org_id in org_ids:
        raw = await r.hget(_org(org_id), "config")
        if raw:
            yield Record("org", (org_id,), Org.model_validate_json(raw))
    for org_id in org_ids:
        for user_id in sorted(await r.smembers(_org(org_id) + ":agents")):
            a = await r.hgetall(f"{_org(org_id)}:a:{user_id}")
            if a:
                yield Record("agent", (org_id, user_id), agent_record(user_id, a))
    for org_id in org_ids:
        for key in await _scan(store, _org(org_id) + ":day:*"):
            day = key[len(_org(org_id) + ":day:") :]
            answered, abandoned, wait = await r.hmget(key, "answered", "abandoned", "wait_total")
            stats = QueueDayStats(int(answered or 0), int(abandoned or 0), float(wait or 0))
            yield Record("queue_day", (org_id, day), stats)
    for org_id in org_ids:
        handles = await r.hgetall(_org(org_id) + ":handle")
        for queue_id in sorted(handles):
            yield Record("handle", (org_id, queue_id), float(handles[queue_id]))
    calls: list[Call] = []
    for key in await _scan(store, "vb:{*}:call"):
        tag = key[len("vb:{") : -len("}:call")]
        if tag.startswith(_CALL_TAGS_NOT):
            continue
        raw = await r.hgetall(key)
        if raw:
            calls.append(Call.model_validate({k: json.loads(v) for k, v in raw.items()}))
    calls.sort(key=_end_order)
    for call in calls:
        yield Record("call", (call.id,), call)
    for u in users:
        hist = await r.lrange(user_key(u) + ":hist", 0, -1)
        if hist:
            yield Record("history", (u,), list(reversed(hist)))
    for call in calls:
        for raw in sorted(await r.hvals(call_key(call.id) + ":fb")):
            fb = Feedback.model_validate_json(raw)
            yield Record("feedback", (call.id, fb.user_id), fb)
    for u in users:
        if "restr" in hashes[u]:
            yield Record("restriction", (u,), Restriction.model_validate_json(hashes[u]["restr"]))
    for u in users:
        reporters = await r.zrange(user_key(u) + ":reporters", 0, -1, withscores=True)
        if reporters:
            yield Record("reporters", (u,), {who: float(at) for who, at in reporters})
    cases = [Case.model_validate_json(v) for v in (await r.hgetall("vb:{cases}:c")).values()]
    for case in sorted(cases, key=lambda c: c.seq):
        yield Record("case", (case.id,), case)
    entries = [
        AuditEntry.model_validate_json(v) for v in (await r.hgetall("vb:{audit}:e")).values()
    ]
    for entry in sorted(entries, key=lambda e: e.seq):
        yield Record("audit", (entry.id,), entry)
    for u in users:
        if "revoked" in hashes[u]:
            yield Record("revoked", (u,), float(hashes[u]["revoked"]))
    for u in users:
        members = await r.hgetall(user_key(u) + ":circle")
        for helper_id in sorted(members):
            yield Record("circle", (u, helper_id), float(members[helper_id]))
    for key in await _scan(store, "vb:{inv:*}"):
        raw = await r.get(key)
        if raw is not None:
            yield Record("invite", (key[len("vb:{inv:") : -1],), Invite.model_validate_json(raw))
    for key in await _scan(store, "vb:{stats}:d:*"):
        raw = await r.hgetall(key)
        if raw:
            counts = {scope: Counts.unpacked(v).v for scope, v in raw.items()}
            yield Record("day", (key[len("vb:{stats}:d:") :],), counts)
    for name, at in await r.zrange("vb:timers", 0, -1, withscores=True):
        yield Record("timer", (name,), float(at))
    marks = await r.hgetall("vb:marks")
    for name in sorted(marks):
        yield Record("mark", (name,), float(marks[name]))


def _end_order(call: Call) -> tuple[bool, float, str]:
    return (call.ended_at is None, call.ended_at or call.requested_at, call.id)


async def import_redis(store: RedisStore, records: AsyncIterable[Record]) -> int:
    from broker.store.redis import _call_fields
    from broker.store.redis_safety import _audit_indexes, _case_indexes

    r = store.r
    n = 0
    case_seq = audit_seq = 0
    async for rec in records:
        n += 1
        k, v = rec.key, rec.value
        if rec.kind == "profile":
            await store.put_profile(v)
        elif rec.kind == "rung":
            day, count, last_rung = v
            fields: dict[str, str] = {"last_rung": repr(float(last_rung))}
            if day:
                fields.update(rday=day, rcount=str(count))
            await r.hset(user_key(k[0]), mapping=fields)
        elif rec.kind == "duty":
            await store.set_on_duty(k[0], True)
        elif rec.kind == "devices":
            for device in v:
                await store.add_device(device)
        elif rec.kind == "org":
            await store.put_org(v)
        elif rec.kind == "agent":
            org_id, user_id = k
            a: AgentRecord = v
            await r.hset(
                f"{_org(org_id)}:a:{user_id}",
                mapping={
                    "state": a.state,
                    "display_name": a.display_name,
                    "since": repr(a.since),
                    "idle_since": repr(a.idle_since),
                    "wrapup_until": repr(a.wrapup_until),
                    "missed": str(a.missed),
                    "calls": str(a.calls),
                },
            )
            await r.sadd(_org(org_id) + ":agents", user_id)
            await r.hset(user_key(user_id), "agent_org", org_id)
        elif rec.kind == "queue_day":
            stats: QueueDayStats = v
            key = f"{_org(k[0])}:day:{k[1]}"
            await r.hset(
                key,
                mapping={
                    "answered": str(stats.answered),
                    "abandoned": str(stats.abandoned),
                    "wait_total": repr(stats.wait_total_s),
                },
            )
            await r.expire(key, 40 * 86400)
        elif rec.kind == "handle":
            await r.hset(_org(k[0]) + ":handle", k[1], repr(float(v)))
        elif rec.kind == "call":
            await _import_call(store, v, _call_fields(v))
        elif rec.kind == "history" and v:
            await r.rpush(user_key(k[0]) + ":hist", *reversed(v))
        elif rec.kind == "feedback":
            await r.hset(call_key(k[0]) + ":fb", k[1], v.model_dump_json())
        elif rec.kind == "restriction":
            await store.set_restriction(k[0], v)
        elif rec.kind == "reporters":
            await r.zadd(user_key(k[0]) + ":reporters", v)
        elif rec.kind == "case":
            case: Case = v
            await store._add_record(
                keys=["vb:{cases}:c", *_case_indexes(case)],
                args=[case.id, case.seq, case.model_dump_json()],
            )
            case_seq = max(case_seq, case.seq)
            await r.set("vb:{cases}:seq", case_seq)
        elif rec.kind == "audit":
            entry: AuditEntry = v
            await store._add_record(
                keys=["vb:{audit}:e", *_audit_indexes(entry)],
                args=[str(entry.seq), entry.seq, entry.model_dump_json()],
            )
            audit_seq = max(audit_seq, entry.seq)
            await r.set("vb:{audit}:seq", audit_seq)
        elif rec.kind == "revoked":
            await store.revoke_sessions(k[0], float(v))
        elif rec.kind == "circle":
            await store.circle_add(k[0], k[1], float(v))
        elif rec.kind == "invite":
            await store.put_invite(k[0], v)
        elif rec.kind == "day":
            await store.add_counts(k[0], {scope: Counts(list(c)) for scope, c in v.items()})
        elif rec.kind == "timer":
            await store.schedule(k[0], float(v))
        elif rec.kind == "mark":
            await store.set_mark(k[0], float(v))
        else:  # pragma: no cover - RecordKind is closed
            raise ValueError(f"unknown record kind {rec.kind!r}")
    return n


async def _import_call(store: RedisStore, call: Call, fields: dict[str, str]) -> None:
    r = store.r
    await r.hset(call_key(call.id) + ":call", mapping=fields)
    if call.ended_at is not None:
        await r.zadd("vb:ended", {call.id: call.ended_at})
    elif (
        call.replaces is not None
        and call.state is not CallState.ASSIGNED
        and (await r.hget(call_key(call.replaces) + ":call", "ended_at") == "null")
    ):
        # A pending handover: the call it replaces is still open (exported, and so imported,
        # before it: open calls go in the order they were asked for).
        await r.hset(user_key(call.recipient_id), "handover", call.id)
    else:
        await r.hset(user_key(call.recipient_id), "open", call.id)
        if call.helper_id is not None and call.state is CallState.ASSIGNED:
            await r.hset(user_key(call.helper_id), "open", call.id)
    # The fairness record comes from the calls themselves (a wave drops answers older than
    # 30 days by its own clock).
    if call.helper_id is not None and call.assigned_at is not None:
        helper = user_key(call.helper_id)
        await r.zadd(helper + ":ans", {call.id: call.assigned_at})
        role, langs = await r.hmget(helper, "role", "langs")
        if role == "volunteer":  # among the recent helpers of their languages, as on an answer
            for lang in (langs or "").split():
                await r.zadd(
                    "vb:{idx:" + lang + "}:helpers", {call.helper_id: call.assigned_at}, gt=True
                )
