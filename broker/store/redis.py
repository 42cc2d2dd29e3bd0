"""The scale-out store: every piece of shared state in Redis (one server, or a Redis Cluster).

Layout. Keys of one user share the hash tag ``{u:<id>}``, keys of one call the tag ``{<call id>}``
(call ids are ``c_...``), so that each atomic step below touches one hash slot and the same code
runs on a single Redis and on a Cluster:

- ``vb:{u:ID}`` hash: the profile (JSON) and the facts a wave needs without parsing it (zone,
  window, languages, cap), duty, live connection count, the call being rung for (``ring_of``),
  the open call (``open``), a pending handover search (``handover``), the ring budget (``rday``/``rcount``), ``last_rung``, and the index
  entries the user is in (``idx``) or would be in when on duty (``plan``);
  ``vb:{u:ID}:ans`` (zset of answer times, for calls in the last 30 days), ``:hist`` (list of
  ended calls, newest first), ``:blocked`` (set). The hash's ``revoked`` field: sign-ins issued
  before this time are refused (an erasure carries it to the pseudonym, with a ban).
- ``vb:{CALL}:call`` hash, one JSON value per ``Call`` field; ``:ringing`` and ``:rung`` sets;
  ``:fb`` hash of feedback by user.
- ``vb:{idx:LANG}:groups`` set of "zone|start|end" groups, and ``vb:{idx:LANG}:g:GROUP`` zsets of
  on-duty volunteers. A wave converts local time once per group and draws at random from the
  groups inside their ring window, in one script on the language's slot (``candidates_sample``):
  its cost grows with the volunteers it draws, not with everyone registered or in window.
  ``vb:{idx:LANG}:helpers`` zset: volunteers by the time they last answered a call (dropped after
  30 days), for a policy that rings recent helpers first.
- ``vb:timers`` zset of named deadlines; ``vb:ended`` zset of ended calls by end time;
  ``vb:hit:{KEY}`` zsets for rate limits; ``vb:resume:{TOKEN}`` strings.

Atomicity. Each race is decided by one Lua script on one slot:

- ``create_call``: the recipient's ``open`` is taken with HSETNX on their slot (after the call
  hash is written on the call's slot; a lost race deletes that unreferenced hash).
- ``reserve_ring``: step 1 on the volunteer's slot takes ``ring_of`` and one unit of the budget
  (only if not busy and under cap); step 2 on the call's slot adds them to ``ringing``/``rung``
  only if the call still searches and never rang them. A failed step 2 gives step 1 back.
- ``assign`` (first accept wins): the decision is one script on the call's slot: the call still
  searching or queued and the helper in its ``ringing`` set, which it empties. Before it, the
  helper's slot marks ``open`` tentatively (so that ``finish`` racing in between cannot leave a
  helper in an ended call: finish only knows the helper once the call names them); after it,
  the helper's ring is cleared and the answer counted, or the tentative mark is removed.
  Withdrawn volunteers' ``ring_of`` is cleared afterwards, each on its own slot.
- ``release_ring`` decides on the call's slot (SREM from ``ringing``), so that a ring lapsing and
  the same volunteer's accept are ordered by that one slot.
- ``finish`` decides on the call's slot (state to ended, ringing emptied), then releases the
  parties' and the withdrawn volunteers' user state on their slots.
- A handover (``open_handover``): the call hash is written on its slot, then the recipient's
  ``handover`` is taken on theirs only if their ``open`` is the call it replaces and none is
  pending. ``finish``'s step on the recipient's slot moves a pending ``handover`` into
  ``open`` when the replaced call ends, or drops it when the handover ends; ``assign``'s last
  step moves it there when a volunteer answers. Each move is one script on the recipient's
  slot, so a volunteer's accept on one node and the recipient hanging up on another leave the
  same state in either order.
- ``claim_due``, ``hit``, ``take_resume`` are single scripts or commands.

Between the steps of one operation other nodes may see a volunteer still marked ringing or busy
for a moment; they only skip them. If a node dies between steps, what is left is a stale
``ring_of`` or ``open`` pointing at a call that is no longer theirs: ``current_call`` and
``ring_of`` check the call and repair such leftovers, and ``release_ring`` always clears them.

Every Redis connection or timeout error becomes ``StoreUnavailable``.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from pydantic import TypeAdapter
from redis.asyncio.cluster import ClusterNode, RedisCluster

from broker.model import (
    Call,
    CallState,
    Candidate,
    EndReason,
    EscalationOutcome,
    Feedback,
    Profile,
    RingWindow,
    Role,
    local_datetime,
    primary_language,
)
from broker.notify.devices import Device
from broker.orgs import AgentRecord, AgentStateName, Org, QueueDayStats, QueueEntry
from broker.outbox import WebhookDelivery
from broker.store import shown_url
from broker.store.base import (
    RUNG_KEPT_S,
    Admission,
    Assignment,
    CandidateSample,
    Finish,
    Handover,
    PushedRing,
    Record,
    ResumeTicket,
    StoreUnavailable,
    counted_then_created,
)
from broker.store.redis_circles import CirclesMixin
from broker.store.redis_common import (
    REDIS_DOWN,
    WaitingPool,
    agent_record,
    unavailable_on_redis_errors,
)
from broker.store.redis_common import (
    call_key as _call,
)
from broker.store.redis_common import (
    enc as _enc,
)
from broker.store.redis_common import (
    user_key as _user,
)
from broker.store.redis_lobby import LobbyMixin
from broker.store.redis_portable import export_redis, import_redis
from broker.store.redis_safety import ON_DUTY, SafetyMixin

THIRTY_DAYS = 30 * 86400.0
_LOCKED_FIELDS = frozenset(
    {"id", "state", "helper_id", "helper_role", "assigned_at", "ended_at", "end_reason", "ended_by"}
)
_OPEN_STATES = ('"searching"', '"queued"')

P = ParamSpec("P")
T = TypeVar("T")

# --- keys -------------------------------------------------------------------------------------


def _lang(lang: str) -> str:
    return "vb:{idx:" + lang + "}"


def _group_id(profile: Profile) -> str:
    w = profile.ring_window
    return f"{profile.timezone}|{w.start:%H:%M}|{w.end:%H:%M}"


_TIMERS = "vb:timers"
# Webhook deliveries: one hash tag, so that a claim is one script on one slot.
_WEBHOOK_DUE = "vb:{wh}:due"  # zset: delivery id -> due time
_WEBHOOK_DATA = "vb:{wh}:data"  # hash: delivery id -> the delivery (JSON)
_ORGS = "vb:orgs"


def _org(org_id: str) -> str:
    return "vb:{o:" + org_id + "}"


_ENDED_INDEX = "vb:ended"


def _call_fields(call: Call) -> dict[str, str]:
    return {k: _enc(v) for k, v in call.model_dump(mode="json").items()}


@functools.cache
def _call_field(name: str) -> TypeAdapter[Any]:
    annotation: Any = Call.model_fields[name].annotation
    return TypeAdapter(annotation)


def _decode_call(raw: dict[str, str] | list[str]) -> Call:
    if isinstance(raw, list):  # HGETALL as a flat list from a script
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    return Call.model_validate({k: json.loads(v) for k, v in raw.items()})


# --- scripts ----------------------------------------------------------------------------------

# KEYS: call hash. ARGV: field, value, field, value, ...  -> 1 if created
_CREATE_CALL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# create_call in one step, on one Redis (a Cluster: the call's step above, then the recipient's
# HSETNX on their own slot, undone if it fails). KEYS: call hash, recipient's user hash.
# ARGV: call id, then field, value, ...  -> 1 if created
_OPEN_CALL_OF = """
local function open_call(call_key, user_key, id, first_field)
  if redis.call('EXISTS', call_key) == 1 then return 0 end
  if redis.call('HSETNX', user_key, 'open', id) == 0 then return 0 end
  redis.call('HSET', call_key, unpack(ARGV, first_field))
  return 1
end
"""
_CREATE_CALL_OPEN = _OPEN_CALL_OF + "return open_call(KEYS[1], KEYS[2], ARGV[1], 2)\n"

# KEYS: call hash. ARGV: field, value, ... -> set only if the call exists
_UPDATE_CALL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: call hash. ARGV: media_at
_MARK_MEDIA = """
local cur = redis.call('HGET', KEYS[1], 'media_at')
if not cur or cur ~= 'null' then return 0 end
redis.call('HSET', KEYS[1], 'media_at', ARGV[1])
return 1
"""

# KEYS: user hash, blocked set. ARGV: profile json, role, tz, cap, langs, plan, [blocked...]
# Returns {old idx, new idx, last_rung}.
_PUT_PROFILE = """
local old = redis.call('HGET', KEYS[1], 'idx') or '[]'
local new = '[]'
if redis.call('HGET', KEYS[1], 'duty') == '1' then new = ARGV[6] end
redis.call('HSET', KEYS[1], 'profile', ARGV[1], 'role', ARGV[2], 'tz', ARGV[3], 'cap', ARGV[4],
  'langs', ARGV[5], 'plan', ARGV[6], 'idx', new)
redis.call('DEL', KEYS[2])
for i = 7, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return {old, new, redis.call('HGET', KEYS[1], 'last_rung') or '0'}
"""

# KEYS: user hash. ARGV: '1' or '0'. Returns {old idx, new idx, last_rung}.
_SET_DUTY = """
local old = redis.call('HGET', KEYS[1], 'idx') or '[]'
local new = '[]'
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'duty', '1')
  new = redis.call('HGET', KEYS[1], 'plan') or '[]'
else
  redis.call('HDEL', KEYS[1], 'duty')
end
redis.call('HSET', KEYS[1], 'idx', new)
return {old, new, redis.call('HGET', KEYS[1], 'last_rung') or '0'}
"""

# KEYS: user hash. ARGV: +1 or -1
_CONNECTED = """
if ARGV[1] == '1' then return redis.call('HINCRBY', KEYS[1], 'conn', 1) end
local n = tonumber(redis.call('HGET', KEYS[1], 'conn') or '0')
if n > 1 then return redis.call('HINCRBY', KEYS[1], 'conn', -1) end
redis.call('HDEL', KEYS[1], 'conn')
return 0
"""

# What a wave needs of one volunteer, from their hash, answered zset and blocked set: the hash's
# facts, calls answered since the 30-day horizon, blocks, the time of their last answer, and
# their index entries (``idx``) when asked (a helper read from the helpers index).
_FACTS_OF = """
local function facts(user, answered, blocks, horizon, want_idx)
  local h = redis.call('HMGET', user, 'duty', 'role', 'conn', 'dev', 'cap', 'ring_of', 'open',
    'rday', 'rcount', 'last_rung', 'langs', 'runtil')
  local blocked = redis.call('SMEMBERS', blocks)
  if #blocked == 0 then blocked = cjson.empty_array or {} end
  local last = redis.call('ZREVRANGE', answered, 0, 0, 'WITHSCORES')[2] or 0
  local idx = false
  if want_idx == '1' then idx = redis.call('HGET', user, 'idx') or '[]' end
  return {h, redis.call('ZCOUNT', answered, horizon, '+inf'), blocked, last, idx}
end
"""

# One volunteer, on their slot (a Redis Cluster: one call each, pipelined). KEYS: user hash,
# answered, blocked. ARGV: horizon, want idx. One JSON string: it parses far faster than
# nested arrays.
_FACTS = (
    _FACTS_OF
    + """
return cjson.encode(facts(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]))
"""
)

_FACTS_PER_STEP = 200

# Volunteers of a wave in one step, on one Redis (where every key is on one server).
# KEYS: (user hash, answered, blocked) per volunteer. ARGV: horizon, then want idx per volunteer.
_FACTS_MANY = (
    _FACTS_OF
    + """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = facts(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[1], ARGV[1 + (i + 2) / 3])
end
return cjson.encode(out)
"""
)

# A wave's draw, one step on the language's slot. KEYS: its groups set, its helpers zset, then
# the group zsets in window. ARGV: how many groups the caller knows of, n, recent, the 30-day
# horizon, a seed for the draw (Redis's own generator: the same seed, the same draw). Returns {'stale'} when the groups set has grown
# since the caller read it; {'all', member, group index, ...} when no more than n are in
# window; else {'drawn', helpers read, helper..., member, group index, ...}: up to ``recent``
# helpers by last answer, newest first, and n members drawn without replacement (Floyd).
_SAMPLE = """
if redis.call('SCARD', KEYS[1]) ~= tonumber(ARGV[1]) then return {'stale'} end
local n, recent = tonumber(ARGV[2]), tonumber(ARGV[3])
local sizes, total = {}, 0
for i = 3, #KEYS do
  sizes[i] = redis.call('ZCARD', KEYS[i])
  total = total + sizes[i]
end
if total <= n then
  local out = {'all'}
  for i = 3, #KEYS do
    for _, m in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      out[#out + 1] = m
      out[#out + 1] = i - 2
    end
  end
  return out
end
local helpers = {}
if recent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
  helpers = redis.call('ZREVRANGE', KEYS[2], 0, recent - 1)
end
local out = {'drawn', #helpers}
for _, h in ipairs(helpers) do out[#out + 1] = h end
math.randomseed(tonumber(ARGV[5]))
local chosen = {}
for j = total - n, total - 1 do
  local t = math.random(j + 1) - 1
  if chosen[t] then t = j end
  chosen[t] = true
  local g = 3
  while t >= sizes[g] do
    t = t - sizes[g]
    g = g + 1
  end
  out[#out + 1] = redis.call('ZRANGE', KEYS[g], t, t)[1]
  out[#out + 1] = g - 2
end
return out
"""

# The draw and the facts of those drawn in one step, on one Redis (every key on one server);
# a Cluster takes two, ``_SAMPLE`` on the language's slot then ``_FACTS`` per volunteer. The
# KEYS and ARGV of ``_SAMPLE``, then the text before and after the id in a user's key
# (``user_key``); its reply with one element more: the facts of every volunteer it names, once
# each in the order first named, encoded as ``_FACTS_MANY`` does. A volunteer's keys follow
# from the draw, so they cannot be declared beforehand: a standalone server allows that, which
# is why a Cluster does not run this.
_SAMPLE_FACTS = (
    _FACTS_OF
    + "local function draw()\n"
    + _SAMPLE
    + """end
local out = draw()
if out[1] == 'stale' then return out end
local seen, found = {}, {}
local function add(uid, want_idx)
  if seen[uid] then return end
  seen[uid] = true
  local key = ARGV[6] .. uid .. ARGV[7]
  found[#found + 1] = facts(key, key .. ':ans', key .. ':blocked', ARGV[4], want_idx)
end
local first = 2
if out[1] == 'drawn' then
  for i = 3, 2 + out[2] do add(out[i], '1') end
  first = 3 + out[2]
end
for i = first, #out, 2 do add(out[i], '0') end
out[#out + 1] = cjson.encode(found)
return out
"""
)

# Step 1 of reserve_ring, on the volunteer's slot. KEYS: user hash. ARGV: call, day, cap, now.
# Returns false, or {previous rday, previous rcount, previous last_rung}.
_RESERVE_USER = """
local h = redis.call('HMGET', KEYS[1], 'ring_of', 'open', 'rday', 'rcount', 'last_rung')
if h[1] or h[2] then return false end
local count = 0
if h[3] == ARGV[2] then count = tonumber(h[4] or '0') end
if count >= tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], 'ring_of', ARGV[1], 'rday', ARGV[2], 'rcount', count + 1,
  'last_rung', ARGV[4])
return {h[3] or '', h[4] or '', h[5] or ''}
"""

# Undo of step 1. KEYS: user hash. ARGV: call, previous rday, rcount, last_rung.
_RESERVE_UNDO = """
if redis.call('HGET', KEYS[1], 'ring_of') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'ring_of')
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'rday', 'rcount')
else redis.call('HSET', KEYS[1], 'rday', ARGV[2], 'rcount', ARGV[3]) end
if ARGV[4] == '' then redis.call('HDEL', KEYS[1], 'last_rung')
else redis.call('HSET', KEYS[1], 'last_rung', ARGV[4]) end
return 1
"""

# Step 2, on the call's slot. KEYS: call hash, ringing, rung. ARGV: user.
_RESERVE_CALL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '"searching"' and state ~= '"queued"' then return 0 end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# A user's key is these two around their id (for a script that derives it).
_USER_KEY_AROUND = _user("\n").split("\n")

# reserve_ring in one step, on one Redis (a Cluster takes the two steps above, each on its own
# slot, with an undo between them). KEYS: user hash, call hash, its ringing set, its rung set.
# ARGV: call, day, cap, now, user. Both checks first, then both writes: nothing to undo.
_RESERVE_BOTH = """
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= '"searching"' and state ~= '"queued"' then return 0 end
if redis.call('SISMEMBER', KEYS[4], ARGV[5]) == 1 then return 0 end
local h = redis.call('HMGET', KEYS[1], 'ring_of', 'open', 'rday', 'rcount')
if h[1] or h[2] then return 0 end
local count = 0
if h[3] == ARGV[2] then count = tonumber(h[4] or '0') end
if count >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'ring_of', ARGV[1], 'rday', ARGV[2], 'rcount', count + 1,
  'last_rung', ARGV[4])
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""

# KEYS: user hash. ARGV: field, call. Clears the field if it still names the call.
_CLEAR_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# Assign step A, on the helper's slot. KEYS: user hash. ARGV: call.
_ASSIGN_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'ring_of', 'open')
if h[1] ~= ARGV[1] or h[2] then return 0 end
redis.call('HSET', KEYS[1], 'open', ARGV[1])
return 1
"""

# Assign step B, the decision, on the call's slot. KEYS: call hash, ringing.
# ARGV: helper, then field/value pairs to set. Returns false, or {call..., '|', withdrawn...}.
_ASSIGN_CALL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= '"searching"' and state ~= '"queued"' then return false end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return false end
local ringing = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local out = redis.call('HGETALL', KEYS[1])
out[#out + 1] = '|'
for _, u in ipairs(ringing) do
  if u ~= ARGV[1] then out[#out + 1] = u end
end
return out
"""

# Assign step C, on the helper's slot. KEYS: user hash, answered. ARGV: call, won, now, member.
# Returns the helper's languages when they won and are a volunteer (for the helpers index).
_ASSIGN_SETTLE = """
if ARGV[2] == '1' then
  if redis.call('HGET', KEYS[1], 'ring_of') == ARGV[1] then redis.call('HDEL', KEYS[1], 'ring_of') end
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  local h = redis.call('HMGET', KEYS[1], 'role', 'langs')
  if h[1] == 'volunteer' then return h[2] or '' end
  return ''
else
  if redis.call('HGET', KEYS[1], 'open') == ARGV[1] then redis.call('HDEL', KEYS[1], 'open') end
end
return ''
"""

# Finish, the decision, on the call's slot. KEYS: call hash, ringing, rung.
# ARGV: seconds to keep ``rung``, then field/value pairs. Returns false, or
# {call..., '|', withdrawn...}.
_FINISH_CALL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == '"ended"' then return false end
local ringing = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1]))
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local out = redis.call('HGETALL', KEYS[1])
out[#out + 1] = '|'
for _, u in ipairs(ringing) do out[#out + 1] = u end
return out
"""

# Finish, per party, on their slot. KEYS: user hash, history. ARGV: call. A pending handover
# outlives the call it replaces: it becomes the open call (the search goes on).
_FINISH_PARTY = """
local h = redis.call('HMGET', KEYS[1], 'open', 'handover')
if h[1] == ARGV[1] then
  if h[2] then
    redis.call('HSET', KEYS[1], 'open', h[2])
    redis.call('HDEL', KEYS[1], 'handover')
  else
    redis.call('HDEL', KEYS[1], 'open')
  end
elseif h[2] == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'handover')
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""

# A handover, on the recipient's slot (the call hash is written first, on its own). KEYS: user
# hash. ARGV: the call replaced, the handover call. Pending only from that open call, once.
_OPEN_HANDOVER = """
local h = redis.call('HMGET', KEYS[1], 'open', 'handover')
if h[1] ~= ARGV[1] or h[2] then return 0 end
redis.call('HSET', KEYS[1], 'handover', ARGV[2])
return 1
"""

# A handover answered, on the recipient's slot after assign's decision. KEYS: user hash.
# ARGV: the call. It is their open call from now on.
_HANDOVER_TAKEN = """
redis.call('HSET', KEYS[1], 'open', ARGV[1])
if redis.call('HGET', KEYS[1], 'handover') == ARGV[1] then redis.call('HDEL', KEYS[1], 'handover') end
return 1
"""

# KEYS: timers. ARGV: now, limit.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

# KEYS: webhook due zset, webhook data hash. ARGV: now, leased until, limit. Returns the due
# deliveries' JSON, each now leased (its due time moved); an id without data is a leftover, removed.
_CLAIM_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS: webhook due zset, webhook data hash. ARGV: id, JSON, due. Only if still kept.
_RETRY_WEBHOOK = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: webhook due zset, webhook data hash. ARGV: id, JSON, due.
_ADD_WEBHOOK = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: webhook due zset, webhook data hash. ARGV: id.
_DROP_WEBHOOK = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
"""

# KEYS: hits zset. ARGV: now, window start (exclusive), unique member, ttl ms.
_HIT_COUNT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local hits = redis.call('ZCARD', KEYS[1])
"""
_HIT = _HIT_COUNT + "return hits\n"

# create_counted_call in one step, on one Redis (a Cluster takes the hit, then create_call).
# KEYS: the hit's key, the call hash, the recipient's user hash. ARGV: the hit's four (as
# _HIT), the limit, the call id, then field, value, ... (as _CREATE_CALL_OPEN).
_CREATE_COUNTED_CALL = (
    _OPEN_CALL_OF
    + _HIT_COUNT
    + """if hits > tonumber(ARGV[5]) then return 'limited' end
if open_call(KEYS[2], KEYS[3], ARGV[6], 7) == 1 then return 'created' end
return 'open'
"""
)

# KEYS: the user's revocation string. ARGV: the new time. Keeps the latest; returns it as text
# (a Lua number would come back truncated to an integer).
_REVOKE = """
local current = redis.call('HGET', KEYS[1], 'revoked')
if current == false or tonumber(ARGV[1]) > tonumber(current) then
  redis.call('HSET', KEYS[1], 'revoked', ARGV[1])
  return ARGV[1]
end
return current
"""


# --- partner organisations, queues and agents --------------------------------------------------
# Keys of one organisation share the hash tag ``{o:<id>}``: ``vb:{o:ID}`` (its configuration),
# ``:q:QUEUE`` (zset of waiting calls by arrival sequence), ``:qat:QUEUE`` (hash call ->
# enqueued_at), ``:seq``, ``:agents`` (set) and ``:a:USER`` (hash: one agent's record),
# ``:day:DATE`` (hash: that local day's figures), ``:handle`` (hash: queue -> moving average).
# An agent's organisation is the ``agent_org`` field of their user hash. ``vb:orgs`` lists ids.

# KEYS: queue zset, enqueued-at hash, sequence. ARGV: call, now, max length.
_ENQUEUE = """
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if rank then return rank + 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return false end
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: queue zset, enqueued-at hash. ARGV: call.
_DEQUEUE = """
local gone = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return gone
"""

# KEYS: queue zset, enqueued-at hash. Returns {call, enqueued_at, ...} in order.
_ENTRIES = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or '0'
end
return out
"""

# KEYS: agent hash, agents set. ARGV: user, state, now, display name, '1' to set the name.
# Numbers are kept as the strings Python wrote, so that they round-trip exactly.
_SET_AGENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'away', 'since', ARGV[3], 'idle_since', ARGV[3],
    'wrapup_until', '0', 'missed', 0, 'calls', 0, 'display_name', '')
end
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'display_name', ARGV[4]) end
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'since', ARGV[3])
  if ARGV[2] == 'available' then
    local wrapup = redis.call('HGET', KEYS[1], 'wrapup_until')
    local idle = ARGV[3]
    if tonumber(wrapup) > tonumber(ARGV[3]) then idle = wrapup end
    redis.call('HSET', KEYS[1], 'missed', 0, 'idle_since', idle)
  end
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: agent hash. ARGV: now. 1 if the agent is available and past their wrap-up.
_AGENT_READY = """
local h = redis.call('HMGET', KEYS[1], 'state', 'wrapup_until')
if h[1] ~= 'available' then return 0 end
if tonumber(h[2]) > tonumber(ARGV[1]) then return 0 end
return 1
"""

# Step 1 of reserve_agent_ring, on the agent's user slot. KEYS: user hash. ARGV: call, now,
# org. Returns false, or {previous last_rung}.
_RESERVE_AGENT_USER = """
local h = redis.call('HMGET', KEYS[1], 'ring_of', 'open', 'conn', 'last_rung', 'agent_org')
if h[1] or h[2] then return false end
if tonumber(h[3] or '0') < 1 then return false end
if h[5] ~= ARGV[3] then return false end
redis.call('HSET', KEYS[1], 'ring_of', ARGV[1], 'last_rung', ARGV[2])
return {h[4] or ''}
"""

# Undo of step 1. KEYS: user hash. ARGV: call, previous last_rung.
_RESERVE_AGENT_UNDO = """
if redis.call('HGET', KEYS[1], 'ring_of') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'ring_of')
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'last_rung')
else redis.call('HSET', KEYS[1], 'last_rung', ARGV[2]) end
return 1
"""

# Step 2, the decision, on the call's slot. KEYS: call hash, ringing, rung.
# ARGV: user, org (JSON), '1' for exclusive.
_RESERVE_AGENT_CALL = """
local h = redis.call('HMGET', KEYS[1], 'state', 'org')
if h[1] ~= '"queued"' or h[2] ~= ARGV[2] then return 0 end
if ARGV[3] == '1' and redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: agent hash. ARGV: field, increment. Counts only for an agent who exists.
_AGENT_INCR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: agent hash.
_AGENT_ANSWERED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'missed', 0)
redis.call('HINCRBY', KEYS[1], 'calls', 1)
return 1
"""

# KEYS: agent hash. ARGV: now, wrap-up until.
_AGENT_RELEASED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local idle = ARGV[1]
if tonumber(ARGV[2]) > tonumber(ARGV[1]) then idle = ARGV[2] end
redis.call('HSET', KEYS[1], 'wrapup_until', ARGV[2], 'idle_since', idle)
return 1
"""

# KEYS: call hash, ringing. ARGV: overflowed_at (JSON). Returns false, or {call..., '|', agents...}.
_HAND_OVER = """
if redis.call('HGET', KEYS[1], 'state') ~= '"queued"' then return false end
local ringing = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', '"searching"', 'overflowed_at', ARGV[1])
local out = redis.call('HGETALL', KEYS[1])
out[#out + 1] = '|'
for _, u in ipairs(ringing) do out[#out + 1] = u end
return out
"""

# KEYS: call hash, ringing. ARGV: org, queue, now, outcome (each JSON).
# Returns false, or {call..., '|', volunteers...}.
_ESCALATE = """
if redis.call('HGET', KEYS[1], 'state') ~= '"searching"' then return false end
local ringing = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', '"queued"', 'org', ARGV[1], 'queue', ARGV[2],
  'enqueued_at', ARGV[3], 'escalated_at', ARGV[3], 'escalation', ARGV[4])
local out = redis.call('HGETALL', KEYS[1])
out[#out + 1] = '|'
for _, u in ipairs(ringing) do out[#out + 1] = u end
return out
"""

# KEYS: the queue's handle hash. ARGV: queue, seconds, weight.
_HANDLE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = tonumber(ARGV[2])
if old then new = tonumber(old) + tonumber(ARGV[3]) * (new - tonumber(old)) end
local text = string.format('%.17g', new)
redis.call('HSET', KEYS[1], ARGV[1], text)
return text
"""


def _evalsha(pipe: Any, sha: str, numkeys: int, *keys_and_args: Any) -> object:
    # Through execute_command: redis-py refuses ``evalsha`` by name in cluster pipelines, but
    # routes the command itself by its first key, which is all a one-slot script needs.
    return pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)


# Devices: ``vb:{u:ID}:devices`` is a list of {"a": address, "i": id, "d": device JSON}, oldest
# first, with the count in the user hash's ``dev`` (what a wave reads); ``vb:addr:{ADDRESS}``
# names the user an address belongs to.

# KEYS: user hash, device list. ARGV: address, id, device JSON. Returns the id it is kept
# under (a known address keeps its id). The device JSON is stored as a string, never decoded
# here, so that its numbers keep every digit; "i" has the final say on its id.
_ADD_DEVICE = """
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for i, raw in ipairs(items) do
  local e = cjson.decode(raw)
  if e.a == ARGV[1] then
    redis.call('LSET', KEYS[2], i - 1, cjson.encode({a = e.a, i = e.i, d = ARGV[3]}))
    return e.i
  end
end
redis.call('RPUSH', KEYS[2], cjson.encode({a = ARGV[1], i = ARGV[2], d = ARGV[3]}))
redis.call('HSET', KEYS[1], 'dev', redis.call('LLEN', KEYS[2]))
return ARGV[2]
"""

# KEYS: user hash, device list. ARGV: 'a' or 'i', the address or id to drop.
# Returns the addresses dropped.
_DROP_DEVICES = """
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local gone = {}
for _, raw in ipairs(items) do
  local e = cjson.decode(raw)
  if e[ARGV[1]] == ARGV[2] then
    redis.call('LREM', KEYS[2], 1, raw)
    gone[#gone + 1] = e.a
  end
end
local n = redis.call('LLEN', KEYS[2])
if n > 0 then redis.call('HSET', KEYS[1], 'dev', n) else redis.call('HDEL', KEYS[1], 'dev') end
return gone
"""

# KEYS: a string key. ARGV: value. Deletes it only if it still holds the value.
_DEL_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: pushes hash. ARGV: expires_at, ttl seconds, device ids... Returns the ids new to it.
_RECORD_PUSHES = """
local ids = {}
local raw = redis.call('HGET', KEYS[1], 'ids')
if raw then ids = cjson.decode(raw) end
local seen = {}
for _, i in ipairs(ids) do seen[i] = true end
local fresh = {}
for k = 3, #ARGV do
  if not seen[ARGV[k]] then
    seen[ARGV[k]] = true
    ids[#ids + 1] = ARGV[k]
    fresh[#fresh + 1] = ARGV[k]
  end
end
local exp = redis.call('HGET', KEYS[1], 'exp')
if not exp or tonumber(ARGV[1]) > tonumber(exp) then exp = ARGV[1] end
local list = '[]'
if #ids > 0 then list = cjson.encode(ids) end
redis.call('HSET', KEYS[1], 'ids', list, 'exp', exp)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return fresh
"""

# KEYS: pushes hash. Returns {ids JSON, exp} and deletes it, or false.
_TAKE_PUSHES = """
local h = redis.call('HMGET', KEYS[1], 'ids', 'exp')
if not h[1] then return false end
redis.call('DEL', KEYS[1])
return h
"""


def _split(reply: list[Any]) -> tuple[list[str], list[str]]:
    at = reply.index("|")
    return reply[:at], reply[at + 1 :]


def parse_redis_url(url: str) -> tuple[str, bool, dict[str, Any]]:
    """``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` and ``rediss+cluster://``
    (Redis Cluster: seeds, the addresses of one or more of its nodes, comma-separated:
    ``redis+cluster://h1:7000,h2:7000``; the topology is read from the first that answers and
    followed from then on). Returns the URL redis-py understands (with the first seed), whether
    it is a cluster, and client options (``startup_nodes``: the other seeds, for a cluster).
    ``?timeout=SECONDS`` sets the socket timeouts (default 2: a request fails as
    ``unavailable`` rather than hang while Redis is away)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    base = scheme.removesuffix("+cluster")
    if base not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} in {shown_url(url)!r}")
    credentials, at, hosts = parts.netloc.rpartition("@")
    first, *more = hosts.split(",")
    if more and not cluster:
        raise ValueError(
            f"Redis URL {shown_url(url)!r}: several addresses are for a Redis Cluster "
            "(redis+cluster://) only"
        )
    seeds = [_seed(url, seed) for seed in more]
    parts = parts._replace(netloc=credentials + at + first)
    if not parts.hostname:
        raise ValueError(f"Redis URL {shown_url(url)!r} names no host")
    query = parse_qs(parts.query)
    options: dict[str, Any] = {}
    timeout = 2.0
    if "timeout" in query:
        try:
            timeout = float(query.pop("timeout")[0])
        except ValueError:
            raise ValueError(
                f"Redis URL {shown_url(url)!r}: timeout must be a number of seconds"
            ) from None
        if not 0 < timeout <= 60:
            raise ValueError(
                f"Redis URL {shown_url(url)!r}: timeout must be between 0 and 60 seconds"
            )
    if query:
        raise ValueError(
            f"Redis URL {shown_url(url)!r}: unknown option(s) {', '.join(sorted(query))}"
        )
    if cluster and parts.path not in ("", "/", "/0"):
        raise ValueError(f"Redis URL {shown_url(url)!r}: a Redis Cluster has only database 0")
    options["socket_timeout"] = timeout
    options["socket_connect_timeout"] = timeout
    if seeds:
        options["startup_nodes"] = [ClusterNode(host, port) for host, port in seeds]
    return urlunsplit((base, parts.netloc, parts.path, "", "")), cluster, options


# A pooled connection is looked at when taken from the pool, and made again if the server
# closed it (a Redis restarted): otherwise its next command fails, and commands are not
# retried (a script may have run before its reply was lost). redis-py 7 and later skip that
# look while "maintenance notifications" (a Redis Enterprise feature) are on, as they are by
# default ("auto"); the broker does not use them.
try:
    from redis.maint_notifications import MaintNotificationsConfig

    _CHECKED_ON_CHECKOUT: dict[str, Any] = {
        "maint_notifications_config": MaintNotificationsConfig(enabled=False)
    }
except ImportError:  # an older redis-py: no such notifications, the look is always made
    _CHECKED_ON_CHECKOUT = {}


def _hit_key(key: str) -> str:
    return "vb:hit:{" + key + "}"


def _hit_args(now: float, window_s: float) -> list[Any]:
    """A hit's arguments to ``_HIT``: now, the window's start, a member of its own, the TTL."""
    ttl_ms = max(1000, int(window_s * 1000) + 1000)
    return [repr(now), repr(now - window_s), f"{now!r}:{secrets.token_hex(6)}", ttl_ms]


def _seed(url: str, seed: str) -> tuple[str, int]:
    host, colon, port = seed.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"Redis URL {shown_url(url)!r}: seed {seed!r} is not host:port (a port 1-65535)"
        )
    return host.strip("[]"), int(port)


class RedisStore(LobbyMixin, CirclesMixin, SafetyMixin):
    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self.r: Any = client
        self.cluster = isinstance(client, RedisCluster)
        # Operations that failed because Redis could not be reached, by method (metrics).
        self.errors: Counter[str] = Counter()
        self._register_circles(client)
        self._windows: dict[str, tuple[str, RingWindow]] = {}
        self._inside: dict[str, tuple[float, bool, str, str]] = {}
        self._groups: dict[str, list[str]] = {}  # language -> its index groups, as last read
        reg = client.register_script
        self._create_call = reg(_CREATE_CALL)
        self._create_call_open = reg(_CREATE_CALL_OPEN)
        self._update_call = reg(_UPDATE_CALL)
        self._mark_media = reg(_MARK_MEDIA)
        self._put_profile = reg(_PUT_PROFILE)
        self._set_duty = reg(_SET_DUTY)
        self._connected = reg(_CONNECTED)
        self._facts = reg(_FACTS)
        self._facts_many = reg(_FACTS_MANY)
        self._sample = reg(_SAMPLE)
        self._sample_facts = reg(_SAMPLE_FACTS)
        self._reserve_user = reg(_RESERVE_USER)
        self._reserve_undo = reg(_RESERVE_UNDO)
        self._reserve_call = reg(_RESERVE_CALL)
        self._reserve_both = reg(_RESERVE_BOTH)
        self._clear_if = reg(_CLEAR_IF)
        self._assign_claim = reg(_ASSIGN_CLAIM)
        self._assign_call = reg(_ASSIGN_CALL)
        self._assign_settle = reg(_ASSIGN_SETTLE)
        self._finish_call = reg(_FINISH_CALL)
        self._finish_party = reg(_FINISH_PARTY)
        self._open_handover = reg(_OPEN_HANDOVER)
        self._handover_taken = reg(_HANDOVER_TAKEN)
        self._claim_due = reg(_CLAIM_DUE)
        self._add_webhook = reg(_ADD_WEBHOOK)
        self._claim_webhooks = reg(_CLAIM_WEBHOOKS)
        self._retry_webhook = reg(_RETRY_WEBHOOK)
        self._drop_webhook = reg(_DROP_WEBHOOK)
        self._hit = reg(_HIT)
        self._create_counted_call = reg(_CREATE_COUNTED_CALL)
        self._revoke = reg(_REVOKE)
        self._queue_scripts()
        self._add_device = reg(_ADD_DEVICE)
        self._drop_devices = reg(_DROP_DEVICES)
        self._del_if = reg(_DEL_IF)
        self._record_pushes = reg(_RECORD_PUSHES)
        self._take_pushes = reg(_TAKE_PUSHES)
        self._safety_scripts()

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        target, cluster, options = parse_redis_url(url)
        client: aioredis.Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(target, decode_responses=True, **options)
        else:
            # Requests beyond the pool's size wait for a connection rather than fail.
            pool = WaitingPool.from_url(
                target,
                decode_responses=True,
                max_connections=128,
                wait_s=max(5.0, options["socket_timeout"] * 4),
                **options,
                **_CHECKED_ON_CHECKOUT,
            )
            client = aioredis.Redis(connection_pool=pool)
        return cls(client)

    # --- lifecycle -------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def ping(self) -> None:
        await self.r.ping()

    async def close(self) -> None:
        await self.r.aclose()

    # --- profiles --------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def get_profile(self, user_id: str) -> Profile | None:
        key = _user(user_id)
        raw, blocked = await self._pipelined(
            lambda pipe: (pipe.hget(key, "profile"), pipe.smembers(key + ":blocked"))
        )
        if raw is None:
            return None
        profile = Profile.model_validate_json(raw)
        return profile.model_copy(update={"blocked": frozenset(blocked)})

    @unavailable_on_redis_errors
    async def put_profile(self, profile: Profile) -> None:
        key = _user(profile.user_id)
        langs = sorted({primary_language(t) for t in profile.languages})
        plan: list[list[str]] = []
        if profile.role.is_on_duty_helper:
            plan = [[lang, _group_id(profile)] for lang in langs]
        data = profile.model_dump(mode="json", exclude={"blocked"})
        data["ring_window"] = profile.ring_window.as_wire()  # the form its validator reads
        body = _enc(data)
        reply = await self._put_profile(
            keys=[key, key + ":blocked"],
            args=[
                body,
                profile.role.value,
                profile.timezone,
                profile.daily_ring_cap,
                " ".join(langs),
                _enc(plan),
                *sorted(profile.blocked),
            ],
        )
        await self._reindex(profile.user_id, reply)

    async def _reindex(self, user_id: str, reply: list[str]) -> None:
        """Move the user between wave index groups after a profile or duty change. The index is
        a hint that ``candidates`` checks against the user's own hash, so this second step
        needs no atomicity with the first."""
        old = {tuple(p) for p in json.loads(reply[0])}
        new = {tuple(p) for p in json.loads(reply[1])}
        last_rung = float(reply[2])
        pipe = self.r.pipeline(transaction=False)
        for lang, group in old - new:
            pipe.zrem(_lang(lang) + ":g:" + group, user_id)
        for lang, group in new:
            pipe.sadd(_lang(lang) + ":groups", group)
            pipe.zadd(_lang(lang) + ":g:" + group, {user_id: last_rung})
        await pipe.execute()

    # --- availability ----------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def set_on_duty(self, user_id: str, on_duty: bool) -> None:
        reply = await self._set_duty(keys=[_user(user_id)], args=["1" if on_duty else "0"])
        await self._reindex(user_id, reply)
        # Only counted (``on_duty_count``); the user's own hash has the final word.
        if on_duty:
            await self.r.sadd(ON_DUTY, user_id)
        else:
            await self.r.srem(ON_DUTY, user_id)

    @unavailable_on_redis_errors
    async def is_on_duty(self, user_id: str) -> bool:
        return bool(await self.r.hget(_user(user_id), "duty") == "1")

    @unavailable_on_redis_errors
    async def set_connected(self, user_id: str, connected: bool) -> None:
        await self._connected(keys=[_user(user_id)], args=["1" if connected else "-1"])

    @unavailable_on_redis_errors
    async def is_connected(self, user_id: str) -> bool:
        return int(await self.r.hget(_user(user_id), "conn") or 0) > 0

    def _inside_groups(self, groups: Iterable[str], now: float) -> dict[str, tuple[str, str]]:
        """Groups whose ring window is open at ``now``: group -> (zone, local date). Windows
        are whole minutes and zone offsets too, so each group's answer holds until the next
        minute and is converted once per minute, not once per wave."""
        out: dict[str, tuple[str, str]] = {}
        minute = now // 60
        for group in groups:
            seen = self._inside.get(group)
            if seen is None or seen[0] != minute:
                parsed = self._windows.get(group)
                if parsed is None:
                    zone, start, end = group.split("|")
                    parsed = (zone, RingWindow.model_validate({"start": start, "end": end}))
                    self._windows[group] = parsed
                zone, window = parsed
                moment = local_datetime(zone, minute * 60)
                seen = (minute, window.contains(moment.time()), zone, moment.date().isoformat())
                self._inside[group] = seen
            if seen[1]:
                out[group] = (seen[2], seen[3])
        return out

    async def _load_scripts(self) -> None:
        """Load the scripts used inside pipelines (a restarted Redis has forgotten them)."""
        for source in (_FACTS, _FACTS_MANY, _CLEAR_IF, _FINISH_PARTY):
            await self.r.script_load(source)

    async def _pipelined(self, fill: Callable[[Any], object]) -> list[Any]:
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            fill(pipe)
            try:
                return cast(list[Any], await pipe.execute())
            except rex.NoScriptError:
                if attempt == 2:
                    raise
                await self._load_scripts()
        raise AssertionError("unreachable")

    @unavailable_on_redis_errors
    async def candidates(self, language: str, now: float) -> list[Candidate]:
        lang = primary_language(language)
        base = _lang(lang)
        inside = self._inside_groups(await self.r.smembers(base + ":groups"), now)
        if not inside:
            return []
        groups = sorted(inside)
        keys = [base + ":g:" + g for g in groups]
        replies = await self._pipelined(lambda pipe: [pipe.zrange(k, 0, -1) for k in keys])
        members = [(uid, g) for g, got in zip(groups, replies, strict=True) for uid in got]
        return await self._build(members, lang, inside, now)

    @unavailable_on_redis_errors
    async def candidates_sample(
        self, language: str, now: float, n: int, recent: int, rng: random.Random
    ) -> CandidateSample:
        lang = primary_language(language)
        base = _lang(lang)
        seed = rng.getrandbits(31)
        for _ in range(3):
            # The groups a language has only ever grow, so the script checks the count this
            # node knows against the set, and the set is read again only when it grew.
            known = self._groups.get(lang)
            if known is None:
                known = self._groups[lang] = sorted(await self.r.smembers(base + ":groups"))
            inside = self._inside_groups(known, now)
            if not inside:
                # No script runs to notice a group added since: count the set here instead.
                if await self.r.scard(base + ":groups") == len(known):
                    return CandidateSample([], complete=True)
                del self._groups[lang]
                continue
            groups = sorted(inside)
            # On one server the facts come with the draw: one round trip, not two.
            args: list[str | int] = [len(known), n, recent, repr(now - THIRTY_DAYS), seed]
            step = self._sample if self.cluster else self._sample_facts
            reply = await step(
                keys=[base + ":groups", base + ":helpers", *(base + ":g:" + g for g in groups)],
                args=args if self.cluster else [*args, *_USER_KEY_AROUND],
            )
            if reply[0] != "stale":
                break
            del self._groups[lang]
        else:
            raise StoreUnavailable(f"the index of language {lang!r} keeps changing")
        facts: list[Any] | None = None
        if not self.cluster:
            facts = json.loads(reply.pop())
            if isinstance(facts, dict):  # an empty Lua table encodes as {}
                facts = []
        if reply[0] == "all":
            members = [(reply[i], groups[int(reply[i + 1]) - 1]) for i in range(1, len(reply), 2)]
            built = await self._build(members, lang, inside, now, facts)
            return CandidateSample(built, complete=True)
        read = int(reply[1])
        helpers = reply[2 : 2 + read]
        drawn = [(reply[i], groups[int(reply[i + 1]) - 1]) for i in range(2 + read, len(reply), 2)]
        found = await self._build([(uid, "") for uid in helpers] + drawn, lang, inside, now, facts)
        in_lead = set(helpers)
        first = [c for c in found if c.user_id in in_lead]
        rest = [c for c in found if c.user_id not in in_lead]
        more = read >= recent > 0
        # Helpers off duty, unreachable or out of window were dropped: read on down the index
        # until ``recent`` of them are candidates or it ends, as the memory store walks it.
        while more and len(first) < recent:
            want = max(recent - len(first), 16)
            older = await self.r.zrevrange(base + ":helpers", read, read + want - 1)
            read += len(older)
            more = len(older) == want
            fresh = [uid for uid in older if uid not in in_lead]
            in_lead.update(fresh)
            first += (await self._build([(uid, "") for uid in fresh], lang, inside, now))[
                : recent - len(first)
            ]
            if len(first) >= recent:
                more = True
        taken = {c.user_id for c in first}
        return CandidateSample(
            first + [c for c in rest if c.user_id not in taken],
            complete=False,
            recent=len(first),
            more_recent=more,
        )

    @unavailable_on_redis_errors
    async def duty_windows(self, language: str) -> list[tuple[str, RingWindow, int]]:
        base = _lang(primary_language(language))
        groups = sorted(await self.r.smembers(base + ":groups"))
        counts = await self._pipelined(lambda pipe: [pipe.zcard(base + ":g:" + g) for g in groups])
        out: list[tuple[str, RingWindow, int]] = []
        for group, count in zip(groups, counts, strict=True):
            if int(count):
                zone, start, end = group.split("|")
                window = RingWindow.model_validate({"start": start, "end": end})
                out.append((zone, window, int(count)))
        return out

    @unavailable_on_redis_errors
    async def last_rung(self, user_id: str) -> float:
        return float(await self.r.hget(_user(user_id), "last_rung") or 0.0)

    async def _build(
        self,
        members: list[tuple[str, str]],
        lang: str,
        inside: dict[str, tuple[str, str]],
        now: float,
        facts: list[Any] | None = None,
    ) -> list[Candidate]:
        """Candidates from (user, group) pairs read from the index, each checked against the
        user's own hash. A group of ``""`` (a helper, read from the helpers index): their group
        is read from the hash, and they are kept only when it is in window. ``facts``: those
        hashes already read (``_SAMPLE_FACTS``), one per user in the order first named."""
        horizon = repr(now - THIRTY_DAYS)
        unique: dict[str, str] = {}
        for uid, group in members:
            unique.setdefault(uid, group)
        if not unique:
            return []
        if facts is not None:
            replies = facts
        elif self.cluster:  # each volunteer's keys are on their own slot: one call each
            sha = self._facts.sha

            def fill(pipe: Any) -> None:
                for uid, group in unique.items():
                    key = _user(uid)
                    want_idx = "0" if group else "1"
                    _evalsha(pipe, sha, 3, key, key + ":ans", key + ":blocked", horizon, want_idx)

            replies = [json.loads(reply) for reply in await self._pipelined(fill)]
        else:  # one server: a few hundred volunteers per step, the steps in one round trip
            ids = list(unique.items())
            many = self._facts_many.sha

            def fill_many(pipe: Any) -> None:
                # Bounded steps, so that a wave reading everyone in window never holds the
                # server for long: other clients' commands run between them.
                for at in range(0, len(ids), _FACTS_PER_STEP):
                    keys: list[str] = []
                    flags: list[str] = []
                    for uid, group in ids[at : at + _FACTS_PER_STEP]:
                        key = _user(uid)
                        keys += (key, key + ":ans", key + ":blocked")
                        flags.append("0" if group else "1")
                    _evalsha(pipe, many, len(keys), *keys, horizon, *flags)

            replies = [f for step in await self._pipelined(fill_many) for f in json.loads(step)]
        out: list[Candidate] = []
        for (uid, group), reply in zip(unique.items(), replies, strict=True):
            h, count, blocked, last_call, idx = reply
            if isinstance(blocked, dict):  # an empty Lua table encodes as {}
                blocked = []
            duty, role, conn, dev, cap, ring_of, open_, rday, rcount, last_rung, langs, runtil = h
            # The index is a hint: the user's own hash has the final word.
            helper = role in (Role.VOLUNTEER.value, Role.ASSISTANT.value)
            if duty != "1" or not helper or lang not in (langs or "").split():
                continue
            if not (int(conn or 0) > 0 or int(dev or 0) > 0):  # false (nil) is 0
                continue
            if not group:
                group = next((g for lg, g in json.loads(idx) if lg == lang), "")
                if group not in inside:
                    continue
            zone, day = inside[group]
            out.append(
                Candidate(
                    user_id=uid,
                    timezone=zone,
                    calls_30d=int(count),
                    last_rung_at=float(last_rung or 0.0),
                    rings_today=int(rcount or 0) if rday == day else 0,
                    ring_day=day,
                    daily_ring_cap=int(cap or 0),
                    busy=bool(ring_of or open_),
                    blocked=frozenset(blocked),
                    last_call_at=float(last_call),
                    restricted=bool(runtil) and (runtil == "inf" or float(runtil) > now),
                    assistant=role == Role.ASSISTANT.value,
                )
            )
        return out

    # --- devices ---------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def has_devices(self, user_id: str) -> bool:
        return int(await self.r.hget(_user(user_id), "dev") or 0) > 0

    @unavailable_on_redis_errors
    async def add_device(self, device: Device) -> Device:
        address = device.address
        addr_key = "vb:addr:{" + address + "}"
        owner = await self.r.get(addr_key)
        if owner is not None and owner != device.user_id:
            # A phone signed in to another account: the address leaves its previous owner.
            await self._drop_devices(
                keys=[_user(owner), _user(owner) + ":devices"], args=["a", address]
            )
        user = _user(device.user_id)
        kept_id = await self._add_device(
            keys=[user, user + ":devices"], args=[address, device.id, device.model_dump_json()]
        )
        await self.r.set(addr_key, device.user_id)
        return device.model_copy(update={"id": str(kept_id)})

    @unavailable_on_redis_errors
    async def devices(self, user_id: str) -> list[Device]:
        items = await self.r.lrange(_user(user_id) + ":devices", 0, -1)
        out = []
        for raw in items:
            entry = json.loads(raw)
            out.append(Device.model_validate({**json.loads(entry["d"]), "id": entry["i"]}))
        return out

    @unavailable_on_redis_errors
    async def remove_device(self, user_id: str, device_id: str) -> bool:
        user = _user(user_id)
        gone = await self._drop_devices(keys=[user, user + ":devices"], args=["i", device_id])
        for address in gone:
            await self._del_if(keys=["vb:addr:{" + address + "}"], args=[user_id])
        return bool(gone)

    @unavailable_on_redis_errors
    async def record_pushes(
        self, call_id: str, user_id: str, device_ids: list[str], expires_at: float
    ) -> list[str]:
        ttl = int(min(max(expires_at - time.time(), 0.0), 30 * 86400.0)) + 86400
        fresh = await self._record_pushes(
            keys=[_call(call_id) + ":push:" + user_id], args=[repr(expires_at), ttl, *device_ids]
        )
        return [str(i) for i in fresh]

    @unavailable_on_redis_errors
    async def take_pushes(self, call_id: str, user_id: str) -> PushedRing | None:
        got = await self._take_pushes(keys=[_call(call_id) + ":push:" + user_id])
        if got is None:
            return None
        ids = json.loads(got[0])
        return PushedRing(device_ids=[str(i) for i in ids] if ids else [], expires_at=float(got[1]))

    # --- calls -----------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def create_call(self, call: Call) -> bool:
        key = _call(call.id) + ":call"
        flat = [x for kv in _call_fields(call).items() for x in kv]
        if not self.cluster:  # one step where every key is on one server
            opened = await self._create_call_open(
                keys=[key, _user(call.recipient_id)], args=[call.id, *flat]
            )
            return bool(opened)
        if not await self._create_call(keys=[key], args=flat):
            return False
        if await self.r.hsetnx(_user(call.recipient_id), "open", call.id):
            return True
        await self.r.delete(key)  # the recipient already has a call: this one never existed
        return False

    @unavailable_on_redis_errors
    async def create_counted_call(
        self, call: Call, key: str, now: float, window_s: float, limit: int
    ) -> Admission:
        if self.cluster:  # the count and the call live on different slots: two steps
            return await counted_then_created(self, call, key, now, window_s, limit)
        flat = [x for kv in _call_fields(call).items() for x in kv]
        admitted = await self._create_counted_call(
            keys=[_hit_key(key), _call(call.id) + ":call", _user(call.recipient_id)],
            args=[*_hit_args(now, window_s), limit, call.id, *flat],
        )
        if admitted not in ("created", "open", "limited"):
            raise RuntimeError(f"create_counted_call: unexpected answer {admitted!r}")
        return cast(Admission, admitted)

    @unavailable_on_redis_errors
    async def get_call(self, call_id: str) -> Call | None:
        raw = await self.r.hgetall(_call(call_id) + ":call")
        return _decode_call(raw) if raw else None

    @unavailable_on_redis_errors
    async def call_peer(self, call_id: str, user_id: str) -> str | None:
        # Three fields, not the whole record validated into a ``Call``: most of a relayed
        # signal's store cost on Redis.
        state, recipient, helper = await self.r.hmget(
            _call(call_id) + ":call", "state", "recipient_id", "helper_id"
        )
        if state is None or json.loads(state) != CallState.ASSIGNED.value:
            return None
        parties = [json.loads(recipient), json.loads(helper)]
        if user_id not in parties:
            return None
        peer = parties[1] if user_id == parties[0] else parties[0]
        return peer if isinstance(peer, str) else None

    @unavailable_on_redis_errors
    async def update_call(self, call_id: str, **fields: Any) -> None:
        locked = _LOCKED_FIELDS.intersection(fields)
        if locked:
            raise ValueError(f"update_call cannot set {sorted(locked)}: use assign or finish")
        unknown = set(fields) - set(Call.model_fields)
        if unknown:
            raise ValueError(f"update_call: Call has no field(s) {sorted(unknown)}")
        if not fields:
            return
        # Each field as the call's model dumps it, written only if the call exists: one step,
        # no read first (a wave sets its fields after every ring it sends).
        flat = [
            x
            for k, v in fields.items()
            for x in (k, _enc(_call_field(k).dump_python(v, mode="json")))
        ]
        await self._update_call(keys=[_call(call_id) + ":call"], args=flat)

    @unavailable_on_redis_errors
    async def current_call(self, user_id: str) -> str | None:
        key = _user(user_id)
        call_id = await self.r.hget(key, "open")
        if call_id is None:
            return None
        call = await self.get_call(call_id)
        if call is not None and call.state.is_open and call.party_of(user_id) is not None:
            return str(call_id)
        if call is not None and call.state is not CallState.ENDED and call.helper_id is None:
            return None  # an accept in flight: its helper-side mark is not theirs yet
        # A leftover of a node that died between the steps of assign or finish.
        await self._clear_if(keys=[key], args=["open", call_id])
        return None

    @unavailable_on_redis_errors
    async def open_handover(self, call: Call) -> bool:
        if call.replaces is None:
            return False
        key = _call(call.id) + ":call"
        flat = [x for kv in _call_fields(call).items() for x in kv]
        if not await self._create_call(keys=[key], args=flat):
            return False
        user = _user(call.recipient_id)
        if await self._open_handover(keys=[user], args=[call.replaces, call.id]):
            return True
        await self.r.delete(key)  # not from their open call, or one is pending: never existed
        return False

    @unavailable_on_redis_errors
    async def handover_of(self, user_id: str) -> str | None:
        key = _user(user_id)
        call_id = await self.r.hget(key, "handover")
        if call_id is None:
            return None
        call = await self.get_call(call_id)
        if call is not None and call.state.is_open and call.recipient_id == user_id:
            return str(call_id)
        # A leftover of a node that died between finish's steps.
        await self._clear_if(keys=[key], args=["handover", call_id])
        return None

    @unavailable_on_redis_errors
    async def assign(
        self, call_id: str, helper_id: str, helper_name: str, helper_role: Role, now: float
    ) -> Assignment | None:
        user = _user(helper_id)
        if not await self._assign_claim(keys=[user], args=[call_id]):
            return None
        base = _call(call_id)
        fields = {
            "state": CallState.ASSIGNED.value,
            "helper_id": helper_id,
            "helper_name": helper_name,
            "helper_role": helper_role.value,
            "assigned_at": now,
        }
        flat = [x for k, v in fields.items() for x in (k, _enc(v))]
        # Should this fail, whether the decision was taken is unknown: the tentative mark is
        # left for current_call's repair.
        reply = await self._assign_call(
            keys=[base + ":call", base + ":ringing"], args=[helper_id, *flat]
        )
        won = reply is not None
        langs = await self._assign_settle(
            keys=[user, user + ":ans"],
            args=[call_id, "1" if won else "0", repr(now), f"{call_id}"],
        )
        if not won:
            return None
        if langs:  # a volunteer: among the recent helpers of their languages
            await self._pipelined(
                lambda pipe: [
                    pipe.zadd(_lang(lang) + ":helpers", {helper_id: now}) for lang in langs.split()
                ]
            )
        raw, withdrawn = _split(reply)
        call = _decode_call(raw)
        if call.replaces is not None:
            await self._handover_taken(keys=[_user(call.recipient_id)], args=[call_id])
        await self._clear_rings(call_id, withdrawn)
        return Assignment(call=call, withdrawn=sorted(withdrawn))

    async def _clear_rings(self, call_id: str, withdrawn: list[str]) -> None:
        """Free the users whose ring of ``call_id`` was withdrawn (those still ringing for it)."""
        if withdrawn:
            await self._pipelined(
                lambda pipe: [
                    _evalsha(pipe, self._clear_if.sha, 1, _user(u), "ring_of", call_id)
                    for u in withdrawn
                ]
            )

    @unavailable_on_redis_errors
    async def finish(
        self, call_id: str, reason: EndReason, by: Role | None, now: float
    ) -> Finish | None:
        base = _call(call_id)
        fields: dict[str, Any] = {
            "state": CallState.ENDED.value,
            "ended_at": now,
            "end_reason": reason.value,
            "ended_by": by.value if by is not None else None,
        }
        flat = [x for k, v in fields.items() for x in (k, _enc(v))]
        reply = await self._finish_call(
            keys=[base + ":call", base + ":ringing", base + ":rung"],
            args=[int(RUNG_KEPT_S), *flat],
        )
        if reply is None:
            return None
        raw, withdrawn = _split(reply)
        call = _decode_call(raw)
        clear_sha, party_sha = self._clear_if.sha, self._finish_party.sha

        def fill(pipe: Any) -> None:
            for u in withdrawn:
                _evalsha(pipe, clear_sha, 1, _user(u), "ring_of", call_id)
            for party in (call.recipient_id, call.helper_id):
                if party is not None:
                    key = _user(party)
                    _evalsha(pipe, party_sha, 2, key, key + ":hist", call_id)
            pipe.zadd(_ENDED_INDEX, {call_id: now})

        await self._pipelined(fill)
        return Finish(call=call, withdrawn=sorted(withdrawn))

    @unavailable_on_redis_errors
    async def mark_media(self, call_id: str, now: float) -> bool:
        return bool(await self._mark_media(keys=[_call(call_id) + ":call"], args=[_enc(now)]))

    # --- rings -----------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def reserve_ring(
        self, call_id: str, user_id: str, day: str, cap: int, now: float
    ) -> bool:
        user = _user(user_id)
        base = _call(call_id)
        if not self.cluster:  # one step where every key is on one server
            reserved = await self._reserve_both(
                keys=[user, base + ":call", base + ":ringing", base + ":rung"],
                args=[call_id, day, cap, repr(now), user_id],
            )
            return bool(reserved)
        reply = await self._reserve_user(keys=[user], args=[call_id, day, cap, repr(now)])
        if reply is None:
            return False
        previous = list(reply)
        try:
            ok = await self._reserve_call(
                keys=[base + ":call", base + ":ringing", base + ":rung"], args=[user_id]
            )
        except BaseException:
            await self._undo_reserve(user, call_id, previous)
            raise
        if not ok:
            await self._undo_reserve(user, call_id, previous)
            return False
        return True

    async def _undo_reserve(self, user: str, call_id: str, previous: list[str]) -> None:
        try:
            await self._reserve_undo(keys=[user], args=[call_id, *previous])
        except REDIS_DOWN:
            pass  # the stale ring_of is repaired by ring_of()

    @unavailable_on_redis_errors
    async def release_ring(self, call_id: str, user_id: str) -> bool:
        # Decided on the call's slot, where an accept of the same ring is decided too.
        if not await self.r.srem(_call(call_id) + ":ringing", user_id):
            return False
        await self._clear_if(keys=[_user(user_id)], args=["ring_of", call_id])
        return True

    @unavailable_on_redis_errors
    async def ringing(self, call_id: str) -> list[str]:
        return sorted(await self.r.smembers(_call(call_id) + ":ringing"))

    @unavailable_on_redis_errors
    async def ring_of(self, user_id: str) -> str | None:
        user = _user(user_id)
        call_id = await self.r.hget(user, "ring_of")
        if call_id is None:
            return None
        base = _call(call_id)
        if await self.r.sismember(base + ":ringing", user_id):
            return str(call_id)
        state = await self.r.hget(base + ":call", "state")
        if state in _OPEN_STATES and not await self.r.sismember(base + ":rung", user_id):
            return None  # a reserve_ring between its two steps: not ringing yet
        # Withdrawn, lapsed or ended, and the second step of that was lost with its node.
        await self._clear_if(keys=[user], args=["ring_of", call_id])
        return None

    @unavailable_on_redis_errors
    async def rung(self, call_id: str) -> set[str]:
        return set(await self.r.smembers(_call(call_id) + ":rung"))

    # --- feedback and blocks ---------------------------------------------------------------
    @unavailable_on_redis_errors
    async def add_feedback(self, feedback: Feedback) -> bool:
        key = _call(feedback.call_id) + ":fb"
        return bool(await self.r.hsetnx(key, feedback.user_id, feedback.model_dump_json()))

    @unavailable_on_redis_errors
    async def block(self, user_id: str, other_id: str) -> None:
        key = _user(user_id)
        if await self.r.hexists(key, "profile"):
            await self.r.sadd(key + ":blocked", other_id)

    # --- timers ----------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def schedule(self, key: str, at: float) -> None:
        await self.r.zadd(_TIMERS, {key: at})

    @unavailable_on_redis_errors
    async def unschedule(self, *keys: str) -> None:
        if keys:
            await self.r.zrem(_TIMERS, *keys)

    @unavailable_on_redis_errors
    async def claim_due(self, now: float, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        return list(await self._claim_due(keys=[_TIMERS], args=[repr(now), limit]))

    @unavailable_on_redis_errors
    async def next_deadline(self) -> float | None:
        first = await self.r.zrange(_TIMERS, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    @unavailable_on_redis_errors
    async def deadline(self, key: str) -> float | None:
        score = await self.r.zscore(_TIMERS, key)
        return float(score) if score is not None else None

    # --- webhook deliveries ----------------------------------------------------------------
    @unavailable_on_redis_errors
    async def add_webhook(self, delivery: WebhookDelivery) -> None:
        await self._add_webhook(
            keys=[_WEBHOOK_DUE, _WEBHOOK_DATA],
            args=[delivery.id, delivery.to_json(), repr(delivery.due)],
        )

    @unavailable_on_redis_errors
    async def claim_webhooks(
        self, now: float, lease_s: float, limit: int = 50
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        until = now + lease_s
        found = await self._claim_webhooks(
            keys=[_WEBHOOK_DUE, _WEBHOOK_DATA], args=[repr(now), repr(until), limit]
        )
        claimed = [WebhookDelivery.from_json(text).claimed(now, lease_s) for text in found]
        return claimed

    @unavailable_on_redis_errors
    async def retry_webhook(self, delivery: WebhookDelivery) -> bool:
        kept = await self._retry_webhook(
            keys=[_WEBHOOK_DUE, _WEBHOOK_DATA],
            args=[delivery.id, delivery.to_json(), repr(delivery.due)],
        )
        return bool(kept)

    @unavailable_on_redis_errors
    async def drop_webhook(self, delivery_id: str) -> bool:
        return bool(
            await self._drop_webhook(keys=[_WEBHOOK_DUE, _WEBHOOK_DATA], args=[delivery_id])
        )

    @unavailable_on_redis_errors
    async def pending_webhooks(self) -> int:
        return int(await self.r.hlen(_WEBHOOK_DATA))

    # --- rate limits -----------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def hit(self, key: str, now: float, window_s: float) -> int:
        return int(await self._hit(keys=[_hit_key(key)], args=_hit_args(now, window_s)))

    # --- resume ----------------------------------------------------------------------------
    @unavailable_on_redis_errors
    async def put_resume(self, token: str, ticket: ResumeTicket, expires_at: float) -> None:
        # Expiry is decided on the broker's clock in take_resume; Redis's own TTL (on its
        # clock) only collects tokens nobody came back for, so it is generous.
        ttl = int(min(max(expires_at - time.time(), 0.0), 30 * 86400.0)) + 3600
        value = _enc([ticket.user_id, ticket.session_id, expires_at])
        await self.r.set("vb:resume:{" + token + "}", value, ex=ttl)
        # The user's tickets, so that an erasure finds them.
        mine = _user(ticket.user_id) + ":resume"
        await self._pipelined(
            lambda pipe: (pipe.sadd(mine, token), pipe.expire(mine, 31 * 86400 + 7200))
        )

    @unavailable_on_redis_errors
    async def take_resume(self, token: str, now: float) -> ResumeTicket | None:
        raw = await self.r.getdel("vb:resume:{" + token + "}")
        if raw is None:
            return None
        user_id, session_id, expires_at = json.loads(raw)
        await self.r.srem(_user(str(user_id)) + ":resume", token)
        if float(expires_at) < now:
            return None
        return ResumeTicket(str(user_id), str(session_id))

    # --- sign-in revocation ----------------------------------------------------------------
    @unavailable_on_redis_errors
    async def revoke_sessions(self, user_id: str, before: float) -> float:
        # A field of the user's hash: an erasure carries it over to the pseudonym with the ban.
        return float(await self._revoke(keys=[_user(user_id)], args=[repr(before)]))

    @unavailable_on_redis_errors
    async def revoked_before(self, user_id: str) -> float | None:
        raw = await self.r.hget(_user(user_id), "revoked")
        return None if raw is None else float(raw)

    # --- history ---------------------------------------------------------------------------
    async def _calls(self, ids: list[str]) -> list[Call]:
        replies = await self._pipelined(
            lambda pipe: [pipe.hgetall(_call(i) + ":call") for i in ids]
        )
        return [_decode_call(raw) for raw in replies if raw]

    @unavailable_on_redis_errors
    async def calls_of(self, user_id: str, limit: int = 1000) -> list[Call]:
        if limit <= 0:
            return []
        ids = await self.r.lrange(_user(user_id) + ":hist", 0, limit - 1)
        return await self._calls(list(ids))

    @unavailable_on_redis_errors
    async def ended_calls(self, since: float, until: float) -> list[Call]:
        ids = await self.r.zrangebyscore(_ENDED_INDEX, repr(since), f"({until!r}")
        return await self._calls(list(ids))

    # --- partner organisations, queues and agents --------------------------------------------
    def _queue_scripts(self) -> None:
        reg = self.r.register_script
        self._enqueue = reg(_ENQUEUE)
        self._dequeue = reg(_DEQUEUE)
        self._entries = reg(_ENTRIES)
        self._set_agent = reg(_SET_AGENT)
        self._agent_ready = reg(_AGENT_READY)
        self._reserve_agent_user = reg(_RESERVE_AGENT_USER)
        self._reserve_agent_undo = reg(_RESERVE_AGENT_UNDO)
        self._reserve_agent_call = reg(_RESERVE_AGENT_CALL)
        self._agent_incr = reg(_AGENT_INCR)
        self._agent_answered = reg(_AGENT_ANSWERED)
        self._agent_released = reg(_AGENT_RELEASED)
        self._hand_over = reg(_HAND_OVER)
        self._escalate = reg(_ESCALATE)
        self._handle = reg(_HANDLE)

    @unavailable_on_redis_errors
    async def put_org(self, org: Org) -> None:
        await self._pipelined(
            lambda pipe: (
                pipe.hset(_org(org.id), "config", org.model_dump_json()),
                pipe.sadd(_ORGS, org.id),
            )
        )

    @unavailable_on_redis_errors
    async def get_org(self, org_id: str) -> Org | None:
        raw = await self.r.hget(_org(org_id), "config")
        return Org.model_validate_json(raw) if raw else None

    @unavailable_on_redis_errors
    async def list_orgs(self) -> list[Org]:
        ids = sorted(await self.r.smembers(_ORGS))
        raws = await self._pipelined(lambda pipe: [pipe.hget(_org(i), "config") for i in ids])
        return [Org.model_validate_json(raw) for raw in raws if raw]

    @unavailable_on_redis_errors
    async def enqueue(
        self, org_id: str, queue_id: str, call_id: str, now: float, max_length: int
    ) -> int | None:
        base = _org(org_id)
        position = await self._enqueue(
            keys=[f"{base}:q:{queue_id}", f"{base}:qat:{queue_id}", f"{base}:seq"],
            args=[call_id, repr(now), max_length],
        )
        return int(position) if position is not None else None

    @unavailable_on_redis_errors
    async def dequeue(self, org_id: str, queue_id: str, call_id: str) -> bool:
        base = _org(org_id)
        gone = await self._dequeue(
            keys=[f"{base}:q:{queue_id}", f"{base}:qat:{queue_id}"], args=[call_id]
        )
        return bool(gone)

    @unavailable_on_redis_errors
    async def queue_entries(self, org_id: str, queue_id: str) -> list[QueueEntry]:
        base = _org(org_id)
        flat = await self._entries(keys=[f"{base}:q:{queue_id}", f"{base}:qat:{queue_id}"])
        return [QueueEntry(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]

    @unavailable_on_redis_errors
    async def queue_calls(self, org_id: str, queue_id: str) -> list[tuple[QueueEntry, Call | None]]:
        entries = await self.queue_entries(org_id, queue_id)
        raws = await self._pipelined(
            lambda pipe: [pipe.hgetall(_call(e.call_id) + ":call") for e in entries]
        )
        return [
            (e, _decode_call(raw) if raw else None) for e, raw in zip(entries, raws, strict=True)
        ]

    @unavailable_on_redis_errors
    async def set_agent_state(
        self,
        org_id: str,
        user_id: str,
        state: AgentStateName,
        now: float,
        display_name: str | None = None,
    ) -> AgentRecord:
        user = _user(user_id)
        old = await self.r.hget(user, "agent_org")
        if old is not None and old != org_id:  # moved: leave the old organisation first
            await self._pipelined(
                lambda pipe: (
                    pipe.srem(_org(old) + ":agents", user_id),
                    pipe.delete(_org(old) + ":a:" + user_id),
                )
            )
        await self.r.hset(user, "agent_org", org_id)
        base = _org(org_id)
        await self._set_agent(
            keys=[f"{base}:a:{user_id}", f"{base}:agents"],
            args=[
                user_id,
                state,
                repr(now),
                display_name or "",
                "0" if display_name is None else "1",
            ],
        )
        records = await self._agent_records(org_id, [user_id])
        return records[0]

    async def _agent_records(self, org_id: str, ids: list[str]) -> list[AgentRecord]:
        base = _org(org_id)

        def fill(pipe: Any) -> None:
            for user_id in ids:
                pipe.hgetall(f"{base}:a:{user_id}")
                pipe.hmget(_user(user_id), "conn", "open", "ring_of", "last_rung")

        replies = await self._pipelined(fill)
        out = []
        for n, user_id in enumerate(ids):
            h, (conn, open_call, ring_of, last_rung) = replies[2 * n], replies[2 * n + 1]
            if not h:
                continue
            out.append(
                agent_record(
                    user_id,
                    h,
                    last_rung_at=float(last_rung or 0),
                    connected=int(conn or 0) > 0,
                    busy=open_call is not None,
                    ringing=ring_of,
                )
            )
        return out

    @unavailable_on_redis_errors
    async def agents(self, org_id: str) -> list[AgentRecord]:
        ids = sorted(await self.r.smembers(_org(org_id) + ":agents"))
        return await self._agent_records(org_id, ids)

    @unavailable_on_redis_errors
    async def reserve_agent_ring(
        self, call_id: str, org_id: str, user_id: str, now: float, exclusive: bool
    ) -> bool:
        # The agent's own state (available, past wrap-up) is checked first on the
        # organisation's slot; an agent who goes away a moment later may still get this ring.
        if not await self._agent_ready(keys=[f"{_org(org_id)}:a:{user_id}"], args=[repr(now)]):
            return False
        user = _user(user_id)
        reply = await self._reserve_agent_user(keys=[user], args=[call_id, repr(now), org_id])
        if reply is None:
            return False
        base = _call(call_id)
        try:
            ok = await self._reserve_agent_call(
                keys=[base + ":call", base + ":ringing", base + ":rung"],
                args=[user_id, _enc(org_id), "1" if exclusive else "0"],
            )
        except BaseException:
            await self._undo_agent_reserve(user, call_id, reply[0])
            raise
        if not ok:
            await self._undo_agent_reserve(user, call_id, reply[0])
            return False
        return True

    async def _undo_agent_reserve(self, user: str, call_id: str, last_rung: str) -> None:
        try:
            await self._reserve_agent_undo(keys=[user], args=[call_id, last_rung])
        except REDIS_DOWN:
            pass  # the stale ring_of is repaired by ring_of()

    @unavailable_on_redis_errors
    async def agent_missed(self, org_id: str, user_id: str) -> int:
        key = f"{_org(org_id)}:a:{user_id}"
        return int(await self._agent_incr(keys=[key], args=["missed", 1]))

    @unavailable_on_redis_errors
    async def agent_answered(self, org_id: str, user_id: str) -> None:
        await self._agent_answered(keys=[f"{_org(org_id)}:a:{user_id}"])

    @unavailable_on_redis_errors
    async def agent_released(
        self, org_id: str, user_id: str, now: float, wrapup_until: float
    ) -> None:
        await self._agent_released(
            keys=[f"{_org(org_id)}:a:{user_id}"], args=[repr(now), repr(wrapup_until)]
        )

    @unavailable_on_redis_errors
    async def hand_to_volunteers(self, call_id: str, now: float) -> Handover | None:
        base = _call(call_id)
        reply = await self._hand_over(keys=[base + ":call", base + ":ringing"], args=[_enc(now)])
        if reply is None:
            return None
        raw, withdrawn = _split(reply)
        await self._clear_rings(call_id, withdrawn)
        return Handover(call=_decode_call(raw), withdrawn=sorted(withdrawn))

    @unavailable_on_redis_errors
    async def escalate(
        self, call_id: str, org_id: str, queue_id: str, now: float
    ) -> Handover | None:
        base = _call(call_id)
        reply = await self._escalate(
            keys=[base + ":call", base + ":ringing"],
            args=[_enc(org_id), _enc(queue_id), _enc(now), _enc(EscalationOutcome.QUEUED.value)],
        )
        if reply is None:
            return None
        raw, withdrawn = _split(reply)
        await self._clear_rings(call_id, withdrawn)
        return Handover(call=_decode_call(raw), withdrawn=sorted(withdrawn))

    @unavailable_on_redis_errors
    async def count_queue_outcome(
        self, org_id: str, day: str, answered: bool, wait_s: float
    ) -> None:
        key = f"{_org(org_id)}:day:{day}"
        pipe = self.r.pipeline(transaction=True)
        if answered:
            pipe.hincrby(key, "answered", 1)
            pipe.hincrbyfloat(key, "wait_total", wait_s)
        else:
            pipe.hincrby(key, "abandoned", 1)
        pipe.expire(key, 40 * 86400)
        await pipe.execute()

    @unavailable_on_redis_errors
    async def queue_day_stats(self, org_id: str, day: str) -> QueueDayStats:
        answered, abandoned, wait = await self.r.hmget(
            f"{_org(org_id)}:day:{day}", "answered", "abandoned", "wait_total"
        )
        return QueueDayStats(int(answered or 0), int(abandoned or 0), float(wait or 0))

    @unavailable_on_redis_errors
    async def record_handle_time(
        self, org_id: str, queue_id: str, seconds: float, weight: float
    ) -> float:
        text = await self._handle(
            keys=[_org(org_id) + ":handle"], args=[queue_id, repr(seconds), repr(weight)]
        )
        return float(text)

    @unavailable_on_redis_errors
    async def handle_time(self, org_id: str, queue_id: str) -> float | None:
        raw = await self.r.hget(_org(org_id) + ":handle", queue_id)
        return float(raw) if raw is not None else None

    # --- migration (``Portable``) ----------------------------------------------------------------
    async def export_records(self) -> AsyncIterator[Record]:
        try:
            async for record in export_redis(self):
                yield record
        except REDIS_DOWN as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc

    @unavailable_on_redis_errors
    async def import_records(self, records: AsyncIterable[Record]) -> int:
        return await import_redis(self, records)
