"""The Redis store's duty-of-care part: restrictions, report counts, cases, the audit log, the
per-day call counters, erasure and the retention sweep's facts.

Layout (hash tags keep each atomic step on one slot, so a Redis Cluster works):

- the user's hash ``vb:{u:ID}`` gains ``restr`` (the restriction, JSON), ``runtil`` (its end,
  or ``inf``; read by a wave with the other facts) and ``revoked`` (sign-ins before it are
  revoked); ``vb:{u:ID}:reporters`` zset: who reported them, scored by when (last report).
- ``vb:{cases}:seq`` counter, ``vb:{cases}:c`` hash id -> case JSON, and index zsets scored by
  ``seq``: ``:i:all``, ``:i:s:STATE``, ``:i:r:REASON``, ``:i:u:USER`` (reporter or reported),
  ``:i:o:ORG``. One slot: resolving moves the case between state indexes in one script.
- ``vb:{audit}:seq``, ``vb:{audit}:e`` hash seq -> entry JSON, indexes ``:i:all``,
  ``:i:a:ACTOR``, ``:i:t:TARGET``, ``:i:x:ACTION``, ``:i:o:ORG``.
- ``vb:{stats}:d:DAY`` hash ``scope`` -> that scope's counters (comma-separated), one per
  UTC day.
- ``vb:onduty`` set (counted only), ``vb:marks`` hash of sweep marks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from broker.model import Call, Feedback, Profile, Role
from broker.moderation import (
    AuditEntry,
    AuditQuery,
    Case,
    CaseQuery,
    CaseState,
    Resolution,
    Restriction,
    pseudonymised_case,
    pseudonymised_entry,
    scrubbed_call,
    scrubbed_feedback,
)
from broker.stats import Counts
from broker.store.redis_common import (
    call_key,
    enc,
    unavailable_on_redis_errors,
    user_key,
)

ON_DUTY = "vb:onduty"
_MARKS = "vb:marks"
_ENDED_INDEX = "vb:ended"
_CASES = "vb:{cases}"
_AUDIT = "vb:{audit}"
_STATS = "vb:{stats}"
_PAGE = 200

# KEYS: reporters zset. ARGV: reporter, at, oldest score that no longer counts.
_NOTE_REPORT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2])
"""

# KEYS: user hash. Returns the removed restriction, or false.
_CLEAR_RESTRICTION = """
local r = redis.call('HGET', KEYS[1], 'restr')
if not r then return false end
redis.call('HDEL', KEYS[1], 'restr', 'runtil')
return r
"""

# KEYS: records hash, index zsets... ARGV: id, seq, JSON.
_ADD_RECORD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 2, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) end
return 1
"""

# KEYS: cases hash, open index, resolved index. ARGV: id, seq, resolved JSON.
_RESOLVE_CASE = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: day hash. ARGV: scope, packed counts (comma-separated integers), ... Adds each vector
# to the scope's, so that a day's counters are one field per scope (read back in one HGETALL).
_ADD_COUNTS = """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    local sum = {}
    for x in string.gmatch(cur, '[^,]+') do sum[#sum + 1] = tonumber(x) end
    local j = 0
    for x in string.gmatch(ARGV[i + 1], '[^,]+') do
      j = j + 1
      sum[j] = (sum[j] or 0) + tonumber(x)
    end
    for k = 1, #sum do sum[k] = string.format('%d', sum[k]) end
    redis.call('HSET', KEYS[1], ARGV[i], table.concat(sum, ','))
  end
end
return 1
"""

# KEYS: old index, new index (one slot). Moves every member of the old into the new.
_MOVE_INDEX = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
redis.call('DEL', KEYS[1])
return 1
"""

R = TypeVar("R")


def _case_indexes(case: Case) -> list[str]:
    keys = [
        f"{_CASES}:i:all",
        f"{_CASES}:i:s:{case.state.value}",
        f"{_CASES}:i:r:{case.reason.value}",
        f"{_CASES}:i:u:{case.reporter.id}",
        f"{_CASES}:i:u:{case.reported.id}",
    ]
    if case.org is not None:
        keys.append(f"{_CASES}:i:o:{case.org}")
    return list(dict.fromkeys(keys))


def _case_query_keys(query: CaseQuery) -> list[str]:
    keys = []
    if query.user is not None:
        keys.append(f"{_CASES}:i:u:{query.user}")
    if query.org is not None:
        keys.append(f"{_CASES}:i:o:{query.org}")
    if query.reason is not None:
        keys.append(f"{_CASES}:i:r:{query.reason.value}")
    if query.state is not None:
        keys.append(f"{_CASES}:i:s:{query.state.value}")
    return keys or [f"{_CASES}:i:all"]


def _audit_indexes(entry: AuditEntry) -> list[str]:
    keys = [
        f"{_AUDIT}:i:all",
        f"{_AUDIT}:i:a:{entry.actor}",
        f"{_AUDIT}:i:t:{entry.target}",
        f"{_AUDIT}:i:x:{entry.action.value}",
    ]
    if entry.org is not None:
        keys.append(f"{_AUDIT}:i:o:{entry.org}")
    return list(dict.fromkeys(keys))


def _audit_query_key(query: AuditQuery) -> str:
    if query.target is not None:
        return f"{_AUDIT}:i:t:{query.target}"
    if query.actor is not None:
        return f"{_AUDIT}:i:a:{query.actor}"
    if query.org is not None:
        return f"{_AUDIT}:i:o:{query.org}"
    if query.action is not None:
        return f"{_AUDIT}:i:x:{query.action.value}"
    return f"{_AUDIT}:i:all"


class SafetyMixin:
    """Mixed into ``RedisStore``: needs its client ``r`` and its ``_pipelined``."""

    r: Any
    _pipelined: Callable[[Callable[[Any], object]], Awaitable[list[Any]]]

    def _safety_scripts(self) -> None:
        reg = self.r.register_script
        self._note_report_script = reg(_NOTE_REPORT)
        self._clear_restriction_script = reg(_CLEAR_RESTRICTION)
        self._add_record = reg(_ADD_RECORD)
        self._resolve_case_script = reg(_RESOLVE_CASE)
        self._add_counts_script = reg(_ADD_COUNTS)
        self._move_index = reg(_MOVE_INDEX)

    # --- restrictions --------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def get_restriction(self, user_id: str) -> Restriction | None:
        raw = await self.r.hget(user_key(user_id), "restr")
        return Restriction.model_validate_json(raw) if raw else None

    @unavailable_on_redis_errors
    async def set_restriction(self, user_id: str, restriction: Restriction) -> None:
        until = "inf" if restriction.until is None else repr(restriction.until)
        await self.r.hset(
            user_key(user_id), mapping={"restr": restriction.model_dump_json(), "runtil": until}
        )

    @unavailable_on_redis_errors
    async def clear_restriction(self, user_id: str) -> Restriction | None:
        raw = await self._clear_restriction_script(keys=[user_key(user_id)])
        return Restriction.model_validate_json(raw) if raw else None

    @unavailable_on_redis_errors
    async def note_report(
        self, reported_id: str, reporter_id: str, at: float, window_s: float
    ) -> int:
        return int(
            await self._note_report_script(
                keys=[user_key(reported_id) + ":reporters"],
                args=[reporter_id, repr(at), repr(at - window_s)],
            )
        )

    # --- cases ---------------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def add_case(self, case: Case) -> Case:
        seq = int(await self.r.incr(f"{_CASES}:seq"))
        case = case.model_copy(update={"seq": seq, "id": f"case_{seq}"})
        await self._add_record(
            keys=[f"{_CASES}:c", *_case_indexes(case)],
            args=[case.id, seq, case.model_dump_json()],
        )
        return case

    @unavailable_on_redis_errors
    async def get_case(self, case_id: str) -> Case | None:
        raw = await self.r.hget(f"{_CASES}:c", case_id)
        return Case.model_validate_json(raw) if raw else None

    @unavailable_on_redis_errors
    async def cases(self, query: CaseQuery, before: int | None, limit: int) -> list[Case]:
        raws = self._newest(_case_query_keys(query)[0], f"{_CASES}:c", before)
        return await _matching(raws, Case.model_validate_json, query.matches, limit)

    @unavailable_on_redis_errors
    async def count_cases(self, query: CaseQuery) -> int:
        keys = _case_query_keys(query)
        if len(keys) == 1:
            return int(await self.r.zcard(keys[0]))
        return int(await self.r.execute_command("ZINTERCARD", len(keys), *keys))

    @unavailable_on_redis_errors
    async def resolve_case(self, case_id: str, resolution: Resolution) -> Case | None:
        case = await self.get_case(case_id)
        if case is None or case.resolution is not None:
            return None
        resolved = case.model_copy(update={"state": CaseState.RESOLVED, "resolution": resolution})
        done = await self._resolve_case_script(
            keys=[f"{_CASES}:c", f"{_CASES}:i:s:open", f"{_CASES}:i:s:resolved"],
            args=[case.id, case.seq, resolved.model_dump_json()],
        )
        return resolved if done else None

    # --- the audit log -------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def append_audit(self, entry: AuditEntry) -> AuditEntry:
        seq = int(await self.r.incr(f"{_AUDIT}:seq"))
        entry = entry.model_copy(update={"seq": seq, "id": f"audit_{seq}"})
        await self._add_record(
            keys=[f"{_AUDIT}:e", *_audit_indexes(entry)],
            args=[str(seq), seq, entry.model_dump_json()],
        )
        return entry

    @unavailable_on_redis_errors
    async def audit(self, query: AuditQuery, before: int | None, limit: int) -> list[AuditEntry]:
        raws = self._newest(_audit_query_key(query), f"{_AUDIT}:e", before)
        return await _matching(raws, AuditEntry.model_validate_json, query.matches, limit)

    async def _newest(self, index: str, records: str, before: int | None) -> AsyncIterator[str]:
        """Records listed in ``index`` (a zset scored by sequence number), newest first and
        older than ``before``, read a page at a time from the hash ``records``."""
        top = "+inf" if before is None else f"({before}"
        while True:
            page = await self.r.zrevrangebyscore(
                index, top, "-inf", start=0, num=_PAGE, withscores=True
            )
            if not page:
                return
            for raw in await self.r.hmget(records, [member for member, _ in page]):
                if raw is not None:
                    yield raw
            top = f"({int(page[-1][1])}"
            if len(page) < _PAGE:
                return

    @unavailable_on_redis_errors
    async def feedback_of(self, call_id: str) -> list[Feedback]:
        raw = await self.r.hvals(call_key(call_id) + ":fb")
        return sorted((Feedback.model_validate_json(v) for v in raw), key=lambda f: f.at)

    # --- statistics ----------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def add_counts(self, day: str, counts: Mapping[str, Counts]) -> None:
        flat = [x for scope, c in counts.items() for x in (scope, c.packed())]
        if flat:
            await self._add_counts_script(keys=[f"{_STATS}:d:{day}"], args=flat)

    @unavailable_on_redis_errors
    async def day_counts(self, days: list[str]) -> list[dict[str, Counts]]:
        replies = await self._pipelined(
            lambda pipe: [pipe.hgetall(f"{_STATS}:d:{day}") for day in days]
        )
        return [{scope: Counts.unpacked(v) for scope, v in raw.items()} for raw in replies]

    @unavailable_on_redis_errors
    async def on_duty_count(self) -> int:
        return int(await self.r.scard(ON_DUTY))

    # --- people's data -------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def erase_user(self, user_id: str, pseudonym: str, hit_keys: list[str]) -> None:
        uid = user_id
        user, alias = user_key(uid), user_key(pseudonym)
        store: Any = self
        await store.set_on_duty(uid, False)
        raw_profile = await self.r.hget(user, "profile")
        profile = Profile.model_validate_json(raw_profile) if raw_profile else None
        for device in await store.devices(uid):
            await store.remove_device(uid, device.id)
        history = list(await self.r.lrange(user + ":hist", 0, -1))
        peers: set[str] = set()
        for call_id in history:
            call = await store.get_call(call_id)
            if call is not None and (peer := call.peer_of(uid)) is not None:
                peers.add(peer)
            await self.scrub_call(call_id, {uid: pseudonym})
        for peer in peers:
            await self.r.srem(user_key(peer) + ":blocked", uid)
        # Out of the recent helpers of each language they spoke (where a wave finds them).
        for lang in (await self.r.hget(user, "langs") or "").split():
            await self.r.zrem("vb:{idx:" + lang + "}:helpers", uid)
        # Restriction, revocation and report records stay, under the pseudonym.
        kept = await self.r.hmget(user, "restr", "runtil", "revoked")
        carry = {k: v for k, v in zip(("restr", "runtil", "revoked"), kept, strict=True) if v}
        if carry:
            await self.r.hset(alias, mapping=carry)
        reporters = await self.r.zrange(user + ":reporters", 0, -1, withscores=True)
        if reporters:  # another slot: copied, not renamed
            await self.r.zadd(alias + ":reporters", dict(reporters))
        for token in await self.r.smembers(user + ":resume"):
            await self.r.delete("vb:resume:{" + token + "}")
        for key in hit_keys:
            await self.r.delete("vb:hit:{" + key + "}")
        if profile is not None and profile.role is Role.AGENT and profile.org:
            org = "vb:{o:" + profile.org + "}"
            await self.r.delete(f"{org}:a:{uid}")
            await self.r.srem(f"{org}:agents", uid)
        await self._drop_timers(uid)
        await store._erase_circles(uid)
        await self._erase_from_cases(uid, pseudonym)
        await self._erase_from_audit(uid, pseudonym)
        await self.r.srem(ON_DUTY, uid)
        for suffix in ("", ":ans", ":hist", ":blocked", ":devices", ":resume", ":reporters"):
            await self.r.delete(user + suffix)

    async def _drop_timers(self, user_id: str) -> None:
        """Timers naming the user (e.g. a resume grace period): ``kind|...|user[|...]``."""
        gone: list[str] = []
        async for key, _ in self.r.zscan_iter("vb:timers", match=f"*|{user_id}*"):
            if user_id in key.split("|")[1:]:
                gone.append(key)
        if gone:
            await self.r.zrem("vb:timers", *gone)

    async def _erase_from_cases(self, uid: str, pseudonym: str) -> None:
        ids = await self.r.zrange(f"{_CASES}:i:u:{uid}", 0, -1)
        for case_id, raw in zip(
            ids, await self.r.hmget(f"{_CASES}:c", ids) if ids else [], strict=True
        ):
            if raw is None:
                continue
            case = Case.model_validate_json(raw)
            if case.reporter.id == uid:
                # Their report still counts against the person they reported, under the alias.
                reporters = user_key(case.reported.id) + ":reporters"
                score = await self.r.zscore(reporters, uid)
                if score is not None:
                    await self.r.zadd(reporters, {pseudonym: score})
                    await self.r.zrem(reporters, uid)
            changed = pseudonymised_case(case, uid, pseudonym)
            await self.r.hset(f"{_CASES}:c", case_id, changed.model_dump_json())
        await self._move_index(keys=[f"{_CASES}:i:u:{uid}", f"{_CASES}:i:u:{pseudonym}"])

    async def _erase_from_audit(self, uid: str, pseudonym: str) -> None:
        seqs: set[str] = set()
        for kind in ("a", "t"):
            seqs.update(await self.r.zrange(f"{_AUDIT}:i:{kind}:{uid}", 0, -1))
        ordered = sorted(seqs, key=int)
        if ordered:
            for seq, raw in zip(ordered, await self.r.hmget(f"{_AUDIT}:e", ordered), strict=True):
                if raw is not None:
                    entry = pseudonymised_entry(AuditEntry.model_validate_json(raw), uid, pseudonym)
                    await self.r.hset(f"{_AUDIT}:e", seq, entry.model_dump_json())
        for kind in ("a", "t"):
            await self._move_index(
                keys=[f"{_AUDIT}:i:{kind}:{uid}", f"{_AUDIT}:i:{kind}:{pseudonym}"]
            )

    @unavailable_on_redis_errors
    async def scrub_call(self, call_id: str, pseudonyms: Mapping[str, str]) -> None:
        base = call_key(call_id)
        raw = await self.r.hgetall(base + ":call")
        if raw:
            call = Call.model_validate({k: json.loads(v) for k, v in raw.items()})
            after = scrubbed_call(call, pseudonyms).model_dump(mode="json")
            before = call.model_dump(mode="json")
            changed = {k: enc(v) for k, v in after.items() if before[k] != v}
            if changed:
                await self.r.hset(base + ":call", mapping=changed)
        fb_key = base + ":fb"
        for user_id, alias in pseudonyms.items():
            got = await self.r.hget(fb_key, user_id)
            if got is not None:
                fb = scrubbed_feedback(Feedback.model_validate_json(got), pseudonyms)
                await self.r.hset(fb_key, alias, fb.model_dump_json())
                await self.r.hdel(fb_key, user_id)
            await self.r.delete(f"{base}:push:{user_id}")

    @unavailable_on_redis_errors
    async def ended_between(
        self, since: float, until: float, limit: int
    ) -> list[tuple[str, float]]:
        got = await self.r.zrangebyscore(
            _ENDED_INDEX, repr(since), f"({until!r}", start=0, num=limit, withscores=True
        )
        return [(str(k), float(v)) for k, v in got]

    @unavailable_on_redis_errors
    async def get_mark(self, name: str) -> float | None:
        raw = await self.r.hget(_MARKS, name)
        return float(raw) if raw is not None else None

    @unavailable_on_redis_errors
    async def set_mark(self, name: str, value: float) -> None:
        await self.r.hset(_MARKS, name, repr(value))


async def _matching(
    raws: AsyncIterator[str], parse: Callable[[str], R], keep: Callable[[R], bool], limit: int
) -> list[R]:
    """The first ``limit`` parsed records that ``keep`` accepts."""
    out: list[R] = []
    async for raw in raws:
        record = parse(raw)
        if keep(record):
            out.append(record)
            if len(out) >= limit:
                break
    return out
