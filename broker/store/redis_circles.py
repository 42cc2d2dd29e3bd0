"""The Redis store's trusted circles and circle invitations.

A membership is kept on both sides, each in its own person's slot: the recipient's circle
(``vb:{u:R}:circle``, helper -> since) and the helper's circles (``vb:{u:H}:circles``,
recipient -> since), written circle first; the circle is what dispatch reads. An invitation is
one key of its own (``vb:{inv:K}``), used once by a script, with its recipient's and (for a
proposal) its helper's index of invitation keys beside it, for listing and for erasure. Expiry
is checked against the broker's clock inside the script; the key's TTL only clears it away a
day after it expired.
"""

from __future__ import annotations

from typing import Any

from broker.model import Invite
from broker.store.redis_common import unavailable_on_redis_errors, user_key

# KEYS: invite. ARGV: helper, now. Returns false (none, or for someone else), or
# {'taken'|'expired', body}.
_TAKE_INVITE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local invite = cjson.decode(raw)
if tonumber(invite['expires_at']) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {'expired', raw}
end
local helper = invite['helper_id']
if helper ~= nil and helper ~= cjson.null and helper ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return {'taken', raw}
"""

_DAY_S = 86400


def _invite_key(key: str) -> str:
    return "vb:{inv:" + key + "}"


class CirclesMixin:
    r: Any

    def _register_circles(self, client: Any) -> None:
        self._take_invite = client.register_script(_TAKE_INVITE)

    @unavailable_on_redis_errors
    async def circle_add(self, recipient_id: str, helper_id: str, now: float) -> bool:
        added = await self.r.hsetnx(user_key(recipient_id) + ":circle", helper_id, repr(now))
        if added:
            await self.r.hset(user_key(helper_id) + ":circles", recipient_id, repr(now))
        return bool(added)

    @unavailable_on_redis_errors
    async def circle_remove(self, recipient_id: str, helper_id: str) -> bool:
        removed = await self.r.hdel(user_key(recipient_id) + ":circle", helper_id)
        await self.r.hdel(user_key(helper_id) + ":circles", recipient_id)
        return bool(removed)

    @unavailable_on_redis_errors
    async def circle(self, recipient_id: str) -> dict[str, float]:
        raw = await self.r.hgetall(user_key(recipient_id) + ":circle")
        return {helper: float(since) for helper, since in raw.items()}

    @unavailable_on_redis_errors
    async def circles_of(self, helper_id: str) -> dict[str, float]:
        raw = await self.r.hgetall(user_key(helper_id) + ":circles")
        # A membership whose circle side is gone (removed half-way by a node that died) is not
        # one: the circle decides.
        found: dict[str, float] = {}
        for recipient_id, since in raw.items():
            if await self.r.hexists(user_key(recipient_id) + ":circle", helper_id):
                found[recipient_id] = float(since)
        return found

    @unavailable_on_redis_errors
    async def put_invite(self, key: str, invite: Invite) -> None:
        ttl = max(1, int(invite.expires_at - invite.created_at)) + _DAY_S
        await self.r.set(_invite_key(key), invite.model_dump_json(), ex=ttl)
        await self.r.sadd(user_key(invite.recipient_id) + ":invites", key)
        if invite.helper_id is not None:
            await self.r.sadd(user_key(invite.helper_id) + ":proposals", key)

    async def _unindex_invite(self, key: str, invite: Invite) -> None:
        await self.r.srem(user_key(invite.recipient_id) + ":invites", key)
        if invite.helper_id is not None:
            await self.r.srem(user_key(invite.helper_id) + ":proposals", key)

    @unavailable_on_redis_errors
    async def take_invite(self, key: str, helper_id: str, now: float) -> Invite | None:
        reply = await self._take_invite(keys=[_invite_key(key)], args=[helper_id, repr(now)])
        if not reply:
            return None
        outcome, raw = reply
        invite = Invite.model_validate_json(raw)
        await self._unindex_invite(key, invite)
        return invite if outcome == "taken" else None

    @unavailable_on_redis_errors
    async def proposals_for(self, helper_id: str, now: float) -> list[tuple[str, Invite]]:
        index = user_key(helper_id) + ":proposals"
        keys = sorted(await self.r.smembers(index))
        found: list[tuple[str, Invite]] = []
        for key in keys:
            raw = await self.r.get(_invite_key(key))
            if raw is None:
                await self.r.srem(index, key)  # used, or cleared away after it expired
                continue
            invite = Invite.model_validate_json(raw)
            if invite.expires_at > now:
                found.append((key, invite))
        return sorted(found, key=lambda pair: (pair[1].created_at, pair[0]))

    async def _erase_circles(self, uid: str) -> None:
        """Erasure: the person's circle, their places in others', and the invitations they
        made or were sent."""
        user = user_key(uid)
        for helper_id in await self.r.hkeys(user + ":circle"):
            await self.r.hdel(user_key(helper_id) + ":circles", uid)
        for recipient_id in await self.r.hkeys(user + ":circles"):
            await self.r.hdel(user_key(recipient_id) + ":circle", uid)
        for index in (":invites", ":proposals"):
            for key in await self.r.smembers(user + index):
                raw = await self.r.get(_invite_key(key))
                await self.r.delete(_invite_key(key))
                if raw is not None:
                    await self._unindex_invite(key, Invite.model_validate_json(raw))
        for suffix in (":circle", ":circles", ":invites", ":proposals"):
            await self.r.delete(user + suffix)
