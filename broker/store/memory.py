"""The embedded store: everything in this process's memory.

Each method runs to completion without awaiting anything, so on one event loop every method is
an atomic step; that is all the contract's atomic operations need. Values go in and out as
copies, so a caller that changes what it read cannot change the store behind its back (the Redis
store behaves the same way by construction).

Volunteer groups are insertion-ordered with positional access (``_Bag``), not sets: the order of
candidates, and with it a seeded simulation, then does not depend on string hashing, and a
uniform random sample (``candidates_sample``) costs time in proportion to its size, not to the
population's.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from datetime import time
from itertools import accumulate
from typing import Any

from broker.model import (
    Call,
    CallState,
    Candidate,
    EndReason,
    EscalationOutcome,
    Feedback,
    Invite,
    Profile,
    RingWindow,
    Role,
    lean,
    local_datetime,
    primary_language,
)
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
)
from broker.notify.devices import Device
from broker.orgs import AgentRecord, AgentStateName, Org, QueueDayStats, QueueEntry
from broker.outbox import WebhookDelivery, due_deliveries
from broker.stats import Counts
from broker.store.base import (
    RUNG_KEPT_S,
    Admission,
    Assignment,
    CandidateSample,
    Finish,
    Handover,
    PushedRing,
    ResumeTicket,
    counted_then_created,
)
from broker.store.lobby_index import MemoryLobbyIndex

THIRTY_DAYS = 30 * 86400.0

_WindowKey = tuple[str, time, time]


def _window_key(profile: Profile) -> _WindowKey:
    return (profile.timezone, profile.ring_window.start, profile.ring_window.end)


def _copy(profile: Profile) -> Profile:
    # Every field but ``languages`` is immutable; a deep copy costs ten times more.
    return lean(profile.model_copy(update={"languages": list(profile.languages)}))


class _Bag:
    """An ordered set with O(1) add, remove and access by position (for random samples)."""

    __slots__ = ("items", "where")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.where: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self.where:
            self.where[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: str) -> None:
        at = self.where.pop(item, None)
        if at is None:
            return
        last = self.items.pop()
        if at < len(self.items):
            self.items[at] = last
            self.where[last] = at

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


_LOCKED_FIELDS = frozenset(
    {"id", "state", "helper_id", "helper_role", "assigned_at", "ended_at", "end_reason", "ended_by"}
)


class MemoryStore(MemoryLobbyIndex):
    def __init__(self) -> None:
        self._lobby_init()
        self._profiles: dict[str, Profile] = {}
        self._on_duty: set[str] = set()
        self._connections: dict[str, int] = defaultdict(int)
        self._devices: dict[str, int] = defaultdict(int)  # user -> how many devices
        self._device_list: dict[str, list[Device]] = {}
        self._address_owner: dict[str, str] = {}  # token or endpoint -> user
        self._pushed: dict[tuple[str, str], PushedRing] = {}  # (call, user) -> devices pushed
        self._pushed_order: deque[tuple[float, tuple[str, str]]] = deque()  # for expiry
        # primary language -> (zone, window start, window end) -> on-duty volunteers, so that a
        # wave converts local time once per group and skips whole groups outside their window
        self._by_language: dict[str, dict[_WindowKey, _Bag]] = defaultdict(
            lambda: defaultdict(_Bag)
        )
        # primary language -> volunteers who answered a call, oldest call first (pruned after
        # 30 days): ``candidates_sample`` returns all of them
        self._helpers: dict[str, dict[str, None]] = defaultdict(dict)
        self._last_call: dict[str, float] = {}
        # The last Candidate built for each volunteer, dropped whenever one of its facts changes
        # (profile, ring, call), with the time its 30-day call count next needs recounting.
        self._candidate: dict[str, tuple[Candidate, float]] = {}
        self._calls: dict[str, Call] = {}
        self._open_call: dict[str, str] = {}
        # recipient -> their pending handover search (``open_handover``)
        self._handover: dict[str, str] = {}
        self._ring_of: dict[str, str] = {}
        self._ringing: dict[str, set[str]] = defaultdict(set)
        self._rung: dict[str, set[str]] = defaultdict(set)
        self._rung_ended: deque[tuple[float, str]] = deque()  # (ended at, call): for expiry
        self._ring_count: dict[str, tuple[str, int]] = {}
        self._last_rung: dict[str, float] = {}
        # Lists, not deques: a deque starts with a block of 64 slots (about 700 bytes) and a
        # volunteer's answers in 30 days, or a user's hits in a rate window, are a few.
        self._answered: dict[str, list[float]] = defaultdict(list)
        self._history: dict[str, list[str]] = defaultdict(list)
        self._ended: list[str] = []
        self._feedback: set[tuple[str, str]] = set()
        self._feedback_log: list[Feedback] = []
        self._timers: dict[str, float] = {}
        self._timer_heap: list[tuple[float, str]] = []
        self._webhooks: dict[str, WebhookDelivery] = {}
        self._resume: dict[str, tuple[ResumeTicket, float]] = {}
        self._revoked: dict[str, float] = {}  # user -> tokens issued before this are refused
        self._circle: dict[str, dict[str, float]] = {}  # recipient -> helper -> since
        self._circles_of: dict[str, dict[str, float]] = {}  # helper -> recipient -> since
        self._invites: dict[str, Invite] = {}
        self._proposals: dict[str, set[str]] = {}  # helper -> keys of invites addressed to them
        self._hits: dict[str, list[float]] = defaultdict(list)
        # partner organisations, queues and agents
        self._orgs: dict[str, Org] = {}
        self._queues: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self._agents: dict[str, dict[str, AgentRecord]] = defaultdict(dict)
        self._agent_org: dict[str, str] = {}
        self._queue_days: dict[tuple[str, str], QueueDayStats] = {}
        self._handle: dict[tuple[str, str], float] = {}
        # duty of care
        self._restrictions: dict[str, Restriction] = {}
        self._reporters: dict[str, dict[str, float]] = defaultdict(dict)  # reported -> by whom
        self._cases: dict[int, Case] = {}
        self._case_ids: dict[str, int] = {}
        self._audit: list[AuditEntry] = []
        self._days: dict[str, dict[str, Counts]] = {}
        self._marks: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------------------------
    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # --- profiles --------------------------------------------------------------------------
    async def get_profile(self, user_id: str) -> Profile | None:
        profile = self._profiles.get(user_id)
        return _copy(profile) if profile else None

    async def put_profile(self, profile: Profile) -> None:
        old = self._profiles.get(profile.user_id)
        if old is not None:
            self._unindex(old)
        self._profiles[profile.user_id] = _copy(profile)
        self._changed(profile.user_id)
        self._index(profile.user_id)

    def _index(self, user_id: str) -> None:
        profile = self._profiles.get(user_id)
        if profile is None or not profile.role.is_on_duty_helper or user_id not in self._on_duty:
            return
        key = _window_key(profile)
        for tag in profile.languages:
            self._by_language[primary_language(tag)][key].add(user_id)

    def _unindex(self, profile: Profile) -> None:
        key = _window_key(profile)
        for tag in profile.languages:
            group = self._by_language[primary_language(tag)].get(key)
            if group is not None:
                group.discard(profile.user_id)
        self._candidate.pop(profile.user_id, None)

    # --- availability ----------------------------------------------------------------------
    async def set_on_duty(self, user_id: str, on_duty: bool) -> None:
        if on_duty:
            self._on_duty.add(user_id)
            self._index(user_id)
        else:
            self._on_duty.discard(user_id)
            profile = self._profiles.get(user_id)
            if profile is not None:
                self._unindex(profile)

    async def is_on_duty(self, user_id: str) -> bool:
        return user_id in self._on_duty

    async def set_connected(self, user_id: str, connected: bool) -> None:
        if connected:
            self._connections[user_id] += 1
        elif self._connections.get(user_id, 0) > 1:
            self._connections[user_id] -= 1
        else:
            self._connections.pop(user_id, None)

    async def is_connected(self, user_id: str) -> bool:
        return self._connections.get(user_id, 0) > 0

    async def candidates(self, language: str, now: float) -> list[Candidate]:
        return self._candidates(language, now)

    def _candidates(self, language: str, now: float) -> list[Candidate]:
        out: list[Candidate] = []
        connections, devices, cache = self._connections, self._devices, self._candidate
        for (zone, start, end), members in self._by_language.get(
            primary_language(language), {}
        ).items():
            if not members:
                continue
            moment = local_datetime(zone, now)
            if not RingWindow(start=start, end=end).contains(moment.time()):
                continue
            day = moment.date().isoformat()
            for user_id in members:
                if not (connections.get(user_id) or devices.get(user_id)):
                    continue
                cached = cache.get(user_id)
                if cached is None or cached[1] <= now or cached[0].ring_day != day:
                    cached = self._build_candidate(user_id, day, now)
                    cache[user_id] = cached
                out.append(cached[0])
        return out

    def _build_candidate(self, user_id: str, day: str, now: float) -> tuple[Candidate, float]:
        profile = self._profiles[user_id]
        ring_day, count = self._ring_count.get(user_id, ("", 0))
        answered = self._answered.get(user_id)
        horizon = now - THIRTY_DAYS
        while answered and answered[0] < horizon:
            del answered[0]
        recount_at = answered[0] + THIRTY_DAYS if answered else float("inf")
        candidate = Candidate(
            user_id=user_id,
            timezone=profile.timezone,
            calls_30d=len(answered) if answered else 0,
            last_rung_at=self._last_rung.get(user_id, 0.0),
            rings_today=count if ring_day == day else 0,
            ring_day=day,
            daily_ring_cap=profile.daily_ring_cap,
            busy=user_id in self._ring_of or user_id in self._open_call,
            blocked=profile.blocked,
            last_call_at=self._last_call.get(user_id, 0.0),
            restricted=user_id in self._restrictions and self._restrictions[user_id].active(now),
            assistant=profile.role is Role.ASSISTANT,
        )
        restriction = self._restrictions.get(user_id)
        if restriction is not None and restriction.until is not None and restriction.until > now:
            recount_at = min(recount_at, restriction.until)
        return candidate, recount_at

    async def candidates_sample(
        self, language: str, now: float, n: int, recent: int, rng: random.Random
    ) -> CandidateSample:
        lang = primary_language(language)
        inside: list[tuple[_Bag, str]] = []
        day_of: dict[_WindowKey, tuple[_Bag, str]] = {}
        for key, members in self._by_language.get(lang, {}).items():
            if not members:
                continue
            zone, start, end = key
            moment = local_datetime(zone, now)
            if RingWindow(start=start, end=end).contains(moment.time()):
                day = moment.date().isoformat()
                inside.append((members, day))
                day_of[key] = (members, day)
        total = sum(len(members) for members, _ in inside)
        if total <= n:
            return CandidateSample(self._candidates(language, now), complete=True)
        connections, devices, cache = self._connections, self._devices, self._candidate
        out: list[Candidate] = []
        seen: set[str] = set()

        def take(user_id: str, day: str) -> bool:
            if user_id in seen or not (connections.get(user_id) or devices.get(user_id)):
                return False
            seen.add(user_id)
            cached = cache.get(user_id)
            if cached is None or cached[1] <= now or cached[0].ring_day != day:
                cached = self._build_candidate(user_id, day, now)
                cache[user_id] = cached
            out.append(cached[0])
            return True

        more_recent = False
        if recent > 0:
            helpers = self._helpers.get(lang, {})
            horizon = now - THIRTY_DAYS
            stale = []
            for user_id in helpers:  # kept oldest call first: the stale ones lead
                if self._last_call.get(user_id, 0.0) >= horizon:
                    break
                stale.append(user_id)
            for user_id in stale:
                del helpers[user_id]
            for user_id in reversed(helpers):
                profile = self._profiles.get(user_id)
                group = day_of.get(_window_key(profile)) if profile is not None else None
                # In the index of this language, in window: on duty, a volunteer, speaking it.
                if group is None or user_id not in group[0].where:
                    continue
                if take(user_id, group[1]) and len(out) >= recent:
                    more_recent = True
                    break
        lead = len(out)
        ends = list(accumulate(len(members) for members, _ in inside))
        for position in rng.sample(range(total), n):
            g = bisect_right(ends, position)
            members, day = inside[g]
            take(members.items[position - (ends[g - 1] if g else 0)], day)
        return CandidateSample(out, complete=False, recent=lead, more_recent=more_recent)

    async def duty_windows(self, language: str) -> list[tuple[str, RingWindow, int]]:
        return [
            (zone, RingWindow(start=start, end=end), len(members))
            for (zone, start, end), members in self._by_language.get(
                primary_language(language), {}
            ).items()
            if members
        ]

    async def last_rung(self, user_id: str) -> float:
        return self._last_rung.get(user_id, 0.0)

    def _changed(self, *user_ids: str | None) -> None:
        for user_id in user_ids:
            if user_id is not None:
                self._candidate.pop(user_id, None)

    # --- devices ---------------------------------------------------------------------------
    async def has_devices(self, user_id: str) -> bool:
        return self._devices.get(user_id, 0) > 0

    async def add_device(self, device: Device) -> Device:
        owner = self._address_owner.get(device.address)
        if owner is not None and owner != device.user_id:
            self._drop_devices(owner, lambda d: d.address == device.address)
        mine = self._device_list.setdefault(device.user_id, [])
        for i, known in enumerate(mine):
            if known.address == device.address:
                device = device.model_copy(update={"id": known.id})
                mine[i] = device
                break
        else:
            mine.append(device)
        self._address_owner[device.address] = device.user_id
        self._devices[device.user_id] = len(mine)
        self._changed(device.user_id)
        return device

    async def devices(self, user_id: str) -> list[Device]:
        return list(self._device_list.get(user_id, ()))

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        return self._drop_devices(user_id, lambda d: d.id == device_id)

    def _drop_devices(self, user_id: str, match: Callable[[Device], bool]) -> bool:
        mine = self._device_list.get(user_id, [])
        gone = [d for d in mine if match(d)]
        if not gone:
            return False
        kept = [d for d in mine if not match(d)]
        for d in gone:
            if self._address_owner.get(d.address) == user_id:
                del self._address_owner[d.address]
        if kept:
            self._device_list[user_id] = kept
            self._devices[user_id] = len(kept)
        else:
            self._device_list.pop(user_id, None)
            self._devices.pop(user_id, None)
        self._changed(user_id)
        return True

    async def record_pushes(
        self, call_id: str, user_id: str, device_ids: list[str], expires_at: float
    ) -> list[str]:
        # Records nobody took (a ring declined, so never withdrawn) go a day after they expire.
        # Rings expire in the order they are made, give or take a ring timeout.
        order = self._pushed_order
        while order and order[0][0] < expires_at - 86400.0:
            _, stale = order.popleft()
            old = self._pushed.get(stale)
            if old is not None and old.expires_at < expires_at - 86400.0:
                del self._pushed[stale]
        known = self._pushed.get((call_id, user_id))
        if known is None:
            order.append((expires_at, (call_id, user_id)))
        before = set(known.device_ids) if known else set()
        fresh = [i for i in device_ids if i not in before]
        self._pushed[(call_id, user_id)] = PushedRing(
            device_ids=(known.device_ids if known else []) + fresh,
            expires_at=max(expires_at, known.expires_at) if known else expires_at,
        )
        return fresh

    async def take_pushes(self, call_id: str, user_id: str) -> PushedRing | None:
        return self._pushed.pop((call_id, user_id), None)

    # --- calls -----------------------------------------------------------------------------
    async def create_call(self, call: Call) -> bool:
        if call.recipient_id in self._open_call or call.id in self._calls:
            return False
        self._calls[call.id] = lean(call.model_copy(deep=True))
        self._open_call[call.recipient_id] = call.id
        self._changed(call.recipient_id)  # a volunteer asking for help is busy
        return True

    async def create_counted_call(
        self, call: Call, key: str, now: float, window_s: float, limit: int
    ) -> Admission:
        return await counted_then_created(self, call, key, now, window_s, limit)

    async def get_call(self, call_id: str) -> Call | None:
        call = self._calls.get(call_id)
        # Every relayed signal reads its call: a shallow copy with its own list is a full copy
        # at a tenth of the cost of a deep one (every other field is immutable).
        return call.model_copy(update={"languages": list(call.languages)}) if call else None

    async def call_peer(self, call_id: str, user_id: str) -> str | None:
        call = self._calls.get(call_id)  # no copy: nothing of it leaves but a user id
        if call is None or call.state is not CallState.ASSIGNED:
            return None
        return call.peer_of(user_id)

    async def update_call(self, call_id: str, **fields: Any) -> None:
        locked = _LOCKED_FIELDS.intersection(fields)
        if locked:
            raise ValueError(f"update_call cannot set {sorted(locked)}: use assign or finish")
        call = self._calls.get(call_id)
        if call is None:
            return
        self._calls[call_id] = lean(call.model_copy(update=fields))

    async def current_call(self, user_id: str) -> str | None:
        return self._open_call.get(user_id)

    async def open_handover(self, call: Call) -> bool:
        recipient = call.recipient_id
        if (
            call.replaces is None
            or self._open_call.get(recipient) != call.replaces
            or recipient in self._handover
            or call.id in self._calls
        ):
            return False
        self._calls[call.id] = lean(call.model_copy(deep=True))
        self._handover[recipient] = call.id
        return True

    async def handover_of(self, user_id: str) -> str | None:
        return self._handover.get(user_id)

    async def assign(
        self, call_id: str, helper_id: str, helper_name: str, helper_role: Role, now: float
    ) -> Assignment | None:
        call = self._calls.get(call_id)
        if call is None or not call.state.can_become(CallState.ASSIGNED):
            return None
        if self._ring_of.get(helper_id) != call_id or helper_id in self._open_call:
            return None
        withdrawn = [u for u in self._ringing.pop(call_id, set()) if u != helper_id]
        for user_id in (*withdrawn, helper_id):
            self._ring_of.pop(user_id, None)
        self._changed(*withdrawn, helper_id)
        call = call.model_copy(
            update={
                "state": CallState.ASSIGNED,
                "helper_id": helper_id,
                "helper_name": helper_name,
                "helper_role": helper_role,
                "assigned_at": now,
            }
        )
        self._calls[call_id] = lean(call)
        self._open_call[helper_id] = call_id
        if call.replaces is not None:
            # A handover answered: the recipient's current call from now on (the one it
            # replaces is ended by the broker, ``handed_over``).
            self._open_call[call.recipient_id] = call_id
            if self._handover.get(call.recipient_id) == call_id:
                del self._handover[call.recipient_id]
        self._answered[helper_id].append(now)
        self._last_call[helper_id] = now
        profile = self._profiles.get(helper_id)
        if profile is not None and profile.role is Role.VOLUNTEER:
            for tag in profile.languages:
                helpers = self._helpers[primary_language(tag)]
                helpers.pop(helper_id, None)  # keep them in the order of their last call
                helpers[helper_id] = None
        return Assignment(call=call.model_copy(deep=True), withdrawn=sorted(withdrawn))

    async def finish(
        self, call_id: str, reason: EndReason, by: Role | None, now: float
    ) -> Finish | None:
        call = self._calls.get(call_id)
        if call is None or not call.state.can_become(CallState.ENDED):
            return None
        withdrawn = sorted(self._ringing.pop(call_id, set()))
        for user_id in withdrawn:
            if self._ring_of.get(user_id) == call_id:
                del self._ring_of[user_id]
        self._changed(*withdrawn, call.recipient_id, call.helper_id)
        call = call.model_copy(
            update={"state": CallState.ENDED, "ended_at": now, "end_reason": reason, "ended_by": by}
        )
        self._calls[call_id] = lean(call)
        for party in (call.recipient_id, call.helper_id):
            if party is None:
                continue
            if self._open_call.get(party) == call_id:
                # A pending handover outlives the call it replaces: the search goes on.
                pending = self._handover.pop(party, None)
                if pending is not None:
                    self._open_call[party] = pending
                else:
                    del self._open_call[party]
            elif self._handover.get(party) == call_id:
                del self._handover[party]
            self._history[party].append(call_id)
        self._ended.append(call_id)
        self._rung_ended.append((now, call_id))
        while self._rung_ended and self._rung_ended[0][0] < now - RUNG_KEPT_S:
            self._rung.pop(self._rung_ended.popleft()[1], None)
        return Finish(call=call.model_copy(deep=True), withdrawn=withdrawn)

    async def mark_media(self, call_id: str, now: float) -> bool:
        call = self._calls.get(call_id)
        if call is None or call.media_at is not None:
            return False
        self._calls[call_id] = lean(call.model_copy(update={"media_at": now}))
        return True

    # --- rings -----------------------------------------------------------------------------
    async def reserve_ring(
        self, call_id: str, user_id: str, day: str, cap: int, now: float
    ) -> bool:
        call = self._calls.get(call_id)
        if call is None or call.state not in (CallState.SEARCHING, CallState.QUEUED):
            return False
        if user_id in self._ring_of or user_id in self._open_call:
            return False
        if user_id in self._rung[call_id]:
            return False
        ring_day, count = self._ring_count.get(user_id, (day, 0))
        if ring_day != day:
            count = 0
        if count >= cap:
            return False
        self._ring_count[user_id] = (day, count + 1)
        self._ring_of[user_id] = call_id
        self._changed(user_id)
        self._ringing[call_id].add(user_id)
        self._rung[call_id].add(user_id)
        self._last_rung[user_id] = now
        return True

    async def release_ring(self, call_id: str, user_id: str) -> bool:
        if self._ring_of.get(user_id) != call_id:
            return False
        del self._ring_of[user_id]
        self._ringing[call_id].discard(user_id)
        self._changed(user_id)
        return True

    async def ringing(self, call_id: str) -> list[str]:
        return sorted(self._ringing.get(call_id, ()))

    async def ring_of(self, user_id: str) -> str | None:
        return self._ring_of.get(user_id)

    async def rung(self, call_id: str) -> set[str]:
        return set(self._rung.get(call_id, ()))

    # --- feedback and blocks ---------------------------------------------------------------
    async def add_feedback(self, feedback: Feedback) -> bool:
        key = (feedback.call_id, feedback.user_id)
        if key in self._feedback:
            return False
        self._feedback.add(key)
        self._feedback_log.append(feedback.model_copy())
        return True

    async def block(self, user_id: str, other_id: str) -> None:
        profile = self._profiles.get(user_id)
        if profile is not None:
            self._profiles[user_id] = lean(
                profile.model_copy(update={"blocked": profile.blocked | {other_id}})
            )
            self._changed(user_id)

    # --- timers ----------------------------------------------------------------------------
    async def schedule(self, key: str, at: float) -> None:
        self._timers[key] = at
        heapq.heappush(self._timer_heap, (at, key))

    async def unschedule(self, *keys: str) -> None:
        for key in keys:
            self._timers.pop(key, None)

    async def claim_due(self, now: float, limit: int = 100) -> list[str]:
        due: list[str] = []
        heap = self._timer_heap
        while heap and len(due) < limit and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if self._timers.get(key) == at:  # else moved or cancelled: a stale heap entry
                del self._timers[key]
                due.append(key)
        return due

    async def next_deadline(self) -> float | None:
        heap = self._timer_heap
        while heap and self._timers.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # --- webhook deliveries ----------------------------------------------------------------
    async def add_webhook(self, delivery: WebhookDelivery) -> None:
        self._webhooks[delivery.id] = delivery

    async def claim_webhooks(
        self, now: float, lease_s: float, limit: int = 50
    ) -> list[WebhookDelivery]:
        claimed = [d.claimed(now, lease_s) for d in due_deliveries(self._webhooks, now, limit)]
        for delivery in claimed:
            self._webhooks[delivery.id] = delivery
        return claimed

    async def retry_webhook(self, delivery: WebhookDelivery) -> bool:
        if delivery.id not in self._webhooks:
            return False
        self._webhooks[delivery.id] = delivery
        return True

    async def drop_webhook(self, delivery_id: str) -> bool:
        return self._webhooks.pop(delivery_id, None) is not None

    async def pending_webhooks(self) -> int:
        return len(self._webhooks)

    # --- rate limits -----------------------------------------------------------------------
    async def hit(self, key: str, now: float, window_s: float) -> int:
        hits = self._hits[key]
        while hits and hits[0] <= now - window_s:
            del hits[0]
        hits.append(now)
        return len(hits)

    async def deadline(self, key: str) -> float | None:
        return self._timers.get(key)

    # --- resume ----------------------------------------------------------------------------
    async def put_resume(self, token: str, ticket: ResumeTicket, expires_at: float) -> None:
        self._resume[token] = (ticket, expires_at)

    async def take_resume(self, token: str, now: float) -> ResumeTicket | None:
        entry = self._resume.pop(token, None)
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    # --- sign-in revocation ----------------------------------------------------------------
    async def revoke_sessions(self, user_id: str, before: float) -> float:
        latest = max(before, self._revoked.get(user_id, before))
        self._revoked[user_id] = latest
        return latest

    async def revoked_before(self, user_id: str) -> float | None:
        return self._revoked.get(user_id)

    # --- history ---------------------------------------------------------------------------
    async def calls_of(self, user_id: str, limit: int = 1000) -> list[Call]:
        ids = self._history.get(user_id, [])[-limit:]
        return [self._calls[i].model_copy(deep=True) for i in reversed(ids)]

    async def ended_calls(self, since: float, until: float) -> list[Call]:
        out = []
        for call_id in self._ended:
            call = self._calls[call_id]
            if call.ended_at is not None and since <= call.ended_at < until:
                out.append(call.model_copy(deep=True))
        return out

    # --- partner organisations, queues and agents --------------------------------------------
    async def put_org(self, org: Org) -> None:
        self._orgs[org.id] = org.model_copy(deep=True)

    async def get_org(self, org_id: str) -> Org | None:
        org = self._orgs.get(org_id)
        return org.model_copy(deep=True) if org else None

    async def list_orgs(self) -> list[Org]:
        return [self._orgs[k].model_copy(deep=True) for k in sorted(self._orgs)]

    async def enqueue(
        self, org_id: str, queue_id: str, call_id: str, now: float, max_length: int
    ) -> int | None:
        # A dict keeps insertion order: the queue's order is the order calls joined it.
        queue = self._queues[(org_id, queue_id)]
        if call_id in queue:
            return list(queue).index(call_id) + 1
        if len(queue) >= max_length:
            return None
        queue[call_id] = now
        return len(queue)

    async def dequeue(self, org_id: str, queue_id: str, call_id: str) -> bool:
        return self._queues[(org_id, queue_id)].pop(call_id, None) is not None

    async def queue_entries(self, org_id: str, queue_id: str) -> list[QueueEntry]:
        return [QueueEntry(c, at) for c, at in self._queues.get((org_id, queue_id), {}).items()]

    async def queue_calls(self, org_id: str, queue_id: str) -> list[tuple[QueueEntry, Call | None]]:
        out: list[tuple[QueueEntry, Call | None]] = []
        for call_id, at in self._queues.get((org_id, queue_id), {}).items():
            call = self._calls.get(call_id)
            # A shallow copy with its own list is a full copy of a Call, at a tenth of the cost
            # of a deep one: every other field is immutable.
            copy = call.model_copy(update={"languages": list(call.languages)}) if call else None
            out.append((QueueEntry(call_id, at), copy))
        return out

    async def set_agent_state(
        self,
        org_id: str,
        user_id: str,
        state: AgentStateName,
        now: float,
        display_name: str | None = None,
    ) -> AgentRecord:
        old_org = self._agent_org.get(user_id)
        if old_org is not None and old_org != org_id:
            self._agents[old_org].pop(user_id, None)
        self._agent_org[user_id] = org_id
        agents = self._agents[org_id]
        record = agents.get(user_id) or AgentRecord(user_id=user_id, since=now, idle_since=now)
        if display_name is not None and display_name != record.display_name:
            record = _replace(record, {"display_name": display_name})
        if record.state != state:
            update: dict[str, object] = {"state": state, "since": now}
            if state == "available":
                update.update(missed=0, idle_since=max(now, record.wrapup_until))
            record = _replace(record, update)
        agents[user_id] = record
        return self._live(record)

    def _live(self, record: AgentRecord) -> AgentRecord:
        user_id = record.user_id
        return _replace(
            record,
            {
                "connected": self._connections.get(user_id, 0) > 0,
                "busy": user_id in self._open_call,
                "ringing": self._ring_of.get(user_id),
                "last_rung_at": self._last_rung.get(user_id, 0.0),
            },
        )

    async def agents(self, org_id: str) -> list[AgentRecord]:
        agents = self._agents.get(org_id, {})
        return [self._live(agents[k]) for k in sorted(agents)]

    async def reserve_agent_ring(
        self, call_id: str, org_id: str, user_id: str, now: float, exclusive: bool
    ) -> bool:
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.QUEUED or call.org != org_id:
            return False
        record = self._agents.get(org_id, {}).get(user_id)
        if record is None or not self._live(record).free(now):
            return False
        if exclusive and self._ringing.get(call_id):
            return False
        self._ring_of[user_id] = call_id
        self._ringing[call_id].add(user_id)
        self._rung[call_id].add(user_id)
        self._last_rung[user_id] = now
        return True

    async def agent_missed(self, org_id: str, user_id: str) -> int:
        record = self._agents.get(org_id, {}).get(user_id)
        if record is None:
            return 0
        record = _replace(record, {"missed": record.missed + 1})
        self._agents[org_id][user_id] = record
        return record.missed

    async def agent_answered(self, org_id: str, user_id: str) -> None:
        record = self._agents.get(org_id, {}).get(user_id)
        if record is not None:
            self._agents[org_id][user_id] = _replace(
                record, {"missed": 0, "calls": record.calls + 1}
            )

    async def agent_released(
        self, org_id: str, user_id: str, now: float, wrapup_until: float
    ) -> None:
        record = self._agents.get(org_id, {}).get(user_id)
        if record is not None:
            self._agents[org_id][user_id] = _replace(
                record, {"wrapup_until": wrapup_until, "idle_since": max(now, wrapup_until)}
            )

    async def hand_to_volunteers(self, call_id: str, now: float) -> Handover | None:
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.QUEUED:
            return None
        withdrawn = sorted(self._ringing.pop(call_id, set()))
        for user_id in withdrawn:
            if self._ring_of.get(user_id) == call_id:
                del self._ring_of[user_id]
        call = call.model_copy(update={"state": CallState.SEARCHING, "overflowed_at": now})
        self._calls[call_id] = lean(call)
        return Handover(call=call.model_copy(deep=True), withdrawn=withdrawn)

    async def escalate(
        self, call_id: str, org_id: str, queue_id: str, now: float
    ) -> Handover | None:
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.SEARCHING:
            return None
        withdrawn = sorted(self._ringing.pop(call_id, set()))
        for user_id in withdrawn:
            if self._ring_of.get(user_id) == call_id:
                del self._ring_of[user_id]
        call = call.model_copy(
            update={
                "state": CallState.QUEUED,
                "org": org_id,
                "queue": queue_id,
                "enqueued_at": now,
                "escalated_at": now,
                "escalation": EscalationOutcome.QUEUED,
            }
        )
        self._calls[call_id] = lean(call)
        return Handover(call=call.model_copy(deep=True), withdrawn=withdrawn)

    async def count_queue_outcome(
        self, org_id: str, day: str, answered: bool, wait_s: float
    ) -> None:
        old = self._queue_days.get((org_id, day), QueueDayStats())
        if answered:
            new = QueueDayStats(old.answered + 1, old.abandoned, old.wait_total_s + wait_s)
        else:
            new = QueueDayStats(old.answered, old.abandoned + 1, old.wait_total_s)
        self._queue_days[(org_id, day)] = new

    async def queue_day_stats(self, org_id: str, day: str) -> QueueDayStats:
        return self._queue_days.get((org_id, day), QueueDayStats())

    async def record_handle_time(
        self, org_id: str, queue_id: str, seconds: float, weight: float
    ) -> float:
        old = self._handle.get((org_id, queue_id))
        new = seconds if old is None else old + weight * (seconds - old)
        self._handle[(org_id, queue_id)] = new
        return new

    async def handle_time(self, org_id: str, queue_id: str) -> float | None:
        return self._handle.get((org_id, queue_id))

    # --- duty of care: restrictions -----------------------------------------------------------
    async def get_restriction(self, user_id: str) -> Restriction | None:
        return self._restrictions.get(user_id)

    async def set_restriction(self, user_id: str, restriction: Restriction) -> None:
        self._restrictions[user_id] = restriction
        self._changed(user_id)

    async def clear_restriction(self, user_id: str) -> Restriction | None:
        gone = self._restrictions.pop(user_id, None)
        self._changed(user_id)
        return gone

    async def note_report(
        self, reported_id: str, reporter_id: str, at: float, window_s: float
    ) -> int:
        reporters = self._reporters[reported_id]
        reporters[reporter_id] = at
        for who in [w for w, when in reporters.items() if when <= at - window_s]:
            del reporters[who]
        return sum(1 for when in reporters.values() if when <= at)

    # --- duty of care: cases ------------------------------------------------------------------
    async def add_case(self, case: Case) -> Case:
        seq = len(self._cases) + 1
        case = case.model_copy(update={"seq": seq, "id": f"case_{seq}"})
        self._cases[seq] = case
        self._case_ids[case.id] = seq
        return case

    async def get_case(self, case_id: str) -> Case | None:
        seq = self._case_ids.get(case_id)
        return self._cases[seq] if seq is not None else None

    async def cases(self, query: CaseQuery, before: int | None, limit: int) -> list[Case]:
        out: list[Case] = []
        top = len(self._cases) if before is None else min(before - 1, len(self._cases))
        for seq in range(top, 0, -1):
            if len(out) >= limit:
                break
            case = self._cases[seq]
            if query.matches(case):
                out.append(case)
        return out

    async def count_cases(self, query: CaseQuery) -> int:
        return sum(1 for case in self._cases.values() if query.matches(case))

    async def resolve_case(self, case_id: str, resolution: Resolution) -> Case | None:
        seq = self._case_ids.get(case_id)
        if seq is None or self._cases[seq].resolution is not None:
            return None
        case = self._cases[seq].model_copy(
            update={"state": CaseState.RESOLVED, "resolution": resolution}
        )
        self._cases[seq] = case
        return case

    # --- duty of care: the audit log ----------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> AuditEntry:
        seq = len(self._audit) + 1
        entry = entry.model_copy(update={"seq": seq, "id": f"audit_{seq}"}, deep=True)
        self._audit.append(entry)
        return entry.model_copy(deep=True)

    async def audit(self, query: AuditQuery, before: int | None, limit: int) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        top = len(self._audit) if before is None else min(before - 1, len(self._audit))
        for seq in range(top, 0, -1):
            if len(out) >= limit:
                break
            entry = self._audit[seq - 1]
            if query.matches(entry):
                out.append(entry.model_copy(deep=True))
        return out

    async def feedback_of(self, call_id: str) -> list[Feedback]:
        return [f.model_copy() for f in self._feedback_log if f.call_id == call_id]

    # --- trusted circles ----------------------------------------------------------------------
    async def circle_add(self, recipient_id: str, helper_id: str, now: float) -> bool:
        members = self._circle.setdefault(recipient_id, {})
        if helper_id in members:
            return False
        members[helper_id] = now
        self._circles_of.setdefault(helper_id, {})[recipient_id] = now
        return True

    async def circle_remove(self, recipient_id: str, helper_id: str) -> bool:
        members = self._circle.get(recipient_id, {})
        if members.pop(helper_id, None) is None:
            return False
        if not members:
            self._circle.pop(recipient_id, None)
        theirs = self._circles_of.get(helper_id, {})
        theirs.pop(recipient_id, None)
        if not theirs:
            self._circles_of.pop(helper_id, None)
        return True

    async def circle(self, recipient_id: str) -> dict[str, float]:
        return dict(self._circle.get(recipient_id, {}))

    async def circles_of(self, helper_id: str) -> dict[str, float]:
        return dict(self._circles_of.get(helper_id, {}))

    async def put_invite(self, key: str, invite: Invite) -> None:
        self._put_invite_now(key, invite)

    def _put_invite_now(self, key: str, invite: Invite) -> None:
        self._invites[key] = invite
        if invite.helper_id is not None:
            self._proposals.setdefault(invite.helper_id, set()).add(key)

    def _drop_invite(self, key: str) -> Invite | None:
        invite = self._invites.pop(key, None)
        if invite is not None and invite.helper_id is not None:
            keys = self._proposals.get(invite.helper_id, set())
            keys.discard(key)
            if not keys:
                self._proposals.pop(invite.helper_id, None)
        return invite

    async def take_invite(self, key: str, helper_id: str, now: float) -> Invite | None:
        invite = self._invites.get(key)
        if invite is None:
            return None
        if invite.expires_at <= now:
            self._drop_invite(key)
            return None
        if invite.helper_id is not None and invite.helper_id != helper_id:
            return None
        return self._drop_invite(key)

    async def proposals_for(self, helper_id: str, now: float) -> list[tuple[str, Invite]]:
        found = [(k, self._invites[k]) for k in self._proposals.get(helper_id, set())]
        live = [(k, i) for k, i in found if i.expires_at > now]
        return sorted(live, key=lambda pair: (pair[1].created_at, pair[0]))

    def _forget_circles(self, uid: str) -> None:
        """Erasure: the person's circle, their places in others' and invitations to them."""
        for helper_id in self._circle.pop(uid, {}):
            theirs = self._circles_of.get(helper_id, {})
            theirs.pop(uid, None)
            if not theirs:
                self._circles_of.pop(helper_id, None)
        for recipient_id in self._circles_of.pop(uid, {}):
            members = self._circle.get(recipient_id, {})
            members.pop(uid, None)
            if not members:
                self._circle.pop(recipient_id, None)
        for key in [k for k, i in self._invites.items() if uid in (i.recipient_id, i.helper_id)]:
            self._drop_invite(key)

    # --- statistics ---------------------------------------------------------------------------
    async def add_counts(self, day: str, counts: Mapping[str, Counts]) -> None:
        scopes = self._days.setdefault(day, {})
        for scope, c in counts.items():
            scopes.setdefault(scope, Counts()).add(c)

    async def day_counts(self, days: list[str]) -> list[dict[str, Counts]]:
        empty: dict[str, Counts] = {}
        return [
            {scope: Counts(c.v) for scope, c in self._days.get(day, empty).items()} for day in days
        ]

    async def on_duty_count(self) -> int:
        return len(self._on_duty)

    # --- people's data ------------------------------------------------------------------------
    async def erase_user(self, user_id: str, pseudonym: str, hit_keys: list[str]) -> None:
        uid = user_id
        await self.set_on_duty(uid, False)
        profile = self._profiles.pop(uid, None)
        if profile is not None:
            self._unindex(profile)
        for device in list(self._device_list.get(uid, ())):
            await self.remove_device(uid, device.id)
        for pushed in [k for k in self._pushed if k[1] == uid]:
            del self._pushed[pushed]
        self._connections.pop(uid, None)
        for helpers in self._helpers.values():
            helpers.pop(uid, None)
        tables: list[dict[str, Any]] = [
            self._last_call,
            self._candidate,
            self._open_call,
            self._handover,
            self._ring_of,
            self._ring_count,
            self._last_rung,
            self._answered,
        ]
        for table in tables:
            table.pop(uid, None)
        history = self._history.pop(uid, [])
        peers: set[str] = set()
        for call_id in history:
            call = self._calls.get(call_id)
            if call is not None:
                peer = call.peer_of(uid)
                if peer is not None:
                    peers.add(peer)
            await self.scrub_call(call_id, {uid: pseudonym})
        for someone in self._profiles.values():
            if uid in someone.blocked:
                peers.add(someone.user_id)
        for peer in peers:
            blocker = self._profiles.get(peer)
            if blocker is not None and uid in blocker.blocked:
                self._profiles[peer] = lean(
                    blocker.model_copy(update={"blocked": blocker.blocked - {uid}})
                )
                self._changed(peer)
        for token in [t for t, (ticket, _) in self._resume.items() if ticket.user_id == uid]:
            del self._resume[token]
        self._forget_circles(uid)
        for timer_key in [k for k in self._timers if uid in k.split("|")[1:]]:
            del self._timers[timer_key]
        self._timer_heap = [e for e in self._timer_heap if uid not in e[1].split("|")[1:]]
        heapq.heapify(self._timer_heap)
        for key in hit_keys:
            self._hits.pop(key, None)
        org = self._agent_org.pop(uid, None)
        if org is not None:
            self._agents[org].pop(uid, None)
        restriction = self._restrictions.pop(uid, None)
        if restriction is not None:
            self._restrictions[pseudonym] = restriction
        revoked = self._revoked.pop(uid, None)
        if revoked is not None:
            self._revoked[pseudonym] = revoked
        mine = self._reporters.pop(uid, None)
        if mine:
            self._reporters[pseudonym] = mine
        for reporters in self._reporters.values():
            if uid in reporters:
                reporters[pseudonym] = reporters.pop(uid)
        for seq, case in self._cases.items():
            if case.involves(uid):
                self._cases[seq] = pseudonymised_case(case, uid, pseudonym)
        for i, entry in enumerate(self._audit):
            self._audit[i] = pseudonymised_entry(entry, uid, pseudonym)

    async def scrub_call(self, call_id: str, pseudonyms: Mapping[str, str]) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        self._calls[call_id] = lean(scrubbed_call(call, pseudonyms))
        for i, fb in enumerate(self._feedback_log):
            if fb.call_id == call_id and fb.user_id in pseudonyms:
                self._feedback.discard((call_id, fb.user_id))
                fb = fb.model_copy(update={"user_id": pseudonyms[fb.user_id], "comment": None})
                self._feedback_log[i] = fb
                self._feedback.add((call_id, fb.user_id))

    async def ended_between(
        self, since: float, until: float, limit: int
    ) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for call_id in self._ended:  # in the order calls ended
            ended = self._calls[call_id].ended_at
            if ended is None or ended < since:
                continue
            if ended >= until or len(out) >= limit:
                break
            out.append((call_id, ended))
        return out

    async def get_mark(self, name: str) -> float | None:
        return self._marks.get(name)

    async def set_mark(self, name: str, value: float) -> None:
        self._marks[name] = value


def _replace(record: AgentRecord, update: dict[str, object]) -> AgentRecord:
    return dataclasses.replace(record, **update)  # type: ignore[arg-type]
