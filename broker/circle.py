"""Trusted circles: the helpers a recipient trusts, rung first (or only) when they ask.

The evaluation this product grew from found that people asked to be helped by the same
volunteer again, and arranged it outside the app. A circle makes that choice visible and safe:

- A recipient invites family and friends with a one-time code (or a link carrying it) that
  expires; a volunteer who redeems it joins the circle.
- A recipient may ask a past helper (from the call history) to join; the helper is asked and
  must agree.
- Neither side learns the other's id or contact: each sees the other by display name and an
  opaque handle, a keyed digest of the pair, different on each side.
- Members leave when they like; the recipient removes anyone. A circle ring obeys the same
  windows, caps, blocks and suspensions as any ring (the dispatcher's circle step).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from broker.clock import Clock
from broker.model import BrokerError, CallState, ErrorCode, Invite, Profile, Role
from broker.store.base import Store

# An invitation code as a person reads it out: 12 characters without look-alikes (no 0/O,
# 1/I/L, 5/S, 2/Z), written in groups of four. 27^12 codes: guessing one is hopeless within
# the redemption rate limit.
_ALPHABET = "346789ABCDEFGHJKMNPQRTUVWXY"
CODE_LENGTH = 12
_CODE_SHAPE = re.compile(f"[{_ALPHABET}]{{{CODE_LENGTH}}}")


class CircleSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    invite_ttl_s: float = Field(
        default=7 * 86400, ge=300, le=90 * 86400, description="an invitation code's life"
    )
    proposal_ttl_s: float = Field(
        default=14 * 86400, ge=300, le=90 * 86400, description="a past helper's time to answer"
    )
    max_members: int = Field(default=20, ge=1, le=200, description="helpers in one circle")
    invites_per_day: int = Field(default=20, ge=1, le=1000, description="codes a recipient makes")
    redeems_per_hour: int = Field(
        default=10, ge=1, le=1000, description="codes a volunteer may try in an hour"
    )


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a recipient's circle, as the recipient sees them."""

    member: str  # opaque handle
    display_name: str
    since: float


@dataclass(frozen=True, slots=True)
class Membership:
    """A circle a helper is in, as the helper sees it."""

    circle: str  # opaque handle
    display_name: str
    since: float


@dataclass(frozen=True, slots=True)
class Proposal:
    """A recipient's request to a past helper to join their circle."""

    proposal: str
    display_name: str
    expires_at: float


def normalise_code(code: str) -> str:
    """A code as typed or read out: case, spaces and dashes do not matter."""
    return re.sub(r"[\s-]", "", code).upper()


def code_key(code: str) -> str:
    """The store keeps a code's digest, never the code."""
    return "c_" + hashlib.sha256(normalise_code(code).encode()).hexdigest()


class Circles:
    def __init__(self, store: Store, clock: Clock, settings: CircleSettings, key: bytes) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self._key = key

    def _handle(self, side: str, recipient_id: str, helper_id: str) -> str:
        digest = hmac.new(
            self._key, f"circle|{side}|{recipient_id}|{helper_id}".encode(), hashlib.sha256
        ).hexdigest()
        return ("m_" if side == "member" else "k_") + digest[:20]

    # --- recipients ------------------------------------------------------------------------------
    async def invite(self, recipient: Profile) -> tuple[str, float]:
        """A new one-time code and when it expires."""
        _must_be(recipient, Role.RECIPIENT, "Only recipients invite people into a circle.")
        now = self.clock.now()
        made = await self.store.hit(f"circle-invite|{recipient.user_id}", now, 86400.0)
        if made > self.settings.invites_per_day:
            raise BrokerError(
                ErrorCode.RATE_LIMITED,
                f"You have made {self.settings.invites_per_day} invitations today. "
                "Please try again tomorrow.",
            )
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
        code = "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))
        expires_at = now + self.settings.invite_ttl_s
        await self.store.put_invite(
            code_key(code),
            Invite(recipient_id=recipient.user_id, created_at=now, expires_at=expires_at),
        )
        return code, expires_at

    async def members(self, recipient: Profile) -> list[Member]:
        _must_be(recipient, Role.RECIPIENT, "Only recipients have a circle of helpers.")
        found = []
        for helper_id, since in (await self.store.circle(recipient.user_id)).items():
            helper = await self.store.get_profile(helper_id)
            found.append(
                Member(
                    member=self._handle("member", recipient.user_id, helper_id),
                    display_name=helper.display_name if helper else "",
                    since=since,
                )
            )
        return sorted(found, key=lambda m: (m.since, m.member))

    async def remove(self, recipient: Profile, member: str) -> None:
        _must_be(recipient, Role.RECIPIENT, "Only recipients remove people from their circle.")
        for helper_id in await self.store.circle(recipient.user_id):
            if hmac.compare_digest(self._handle("member", recipient.user_id, helper_id), member):
                await self.store.circle_remove(recipient.user_id, helper_id)
                return
        raise BrokerError(ErrorCode.NOT_FOUND, "There is no such member in your circle.")

    async def propose(self, recipient: Profile, call_id: str) -> tuple[str, float]:
        """Ask the volunteer who answered one of the recipient's past calls to join."""
        _must_be(recipient, Role.RECIPIENT, "Only recipients invite people into a circle.")
        call = await self.store.get_call(call_id)
        if (
            call is None
            or call.recipient_id != recipient.user_id
            or call.state is not CallState.ENDED
            or call.helper_id is None
            or call.helper_role is not Role.VOLUNTEER
        ):
            raise BrokerError(
                ErrorCode.NOT_FOUND, "You have no ended call answered by a volunteer with that id."
            )
        if call.helper_id in await self.store.circle(recipient.user_id):
            raise BrokerError(ErrorCode.CONFLICT, "That helper is already in your circle.")
        if call.helper_id in recipient.blocked:
            raise BrokerError(ErrorCode.CONFLICT, "You blocked that helper.")
        now = self.clock.now()
        proposal = "p_" + secrets.token_urlsafe(12)
        expires_at = now + self.settings.proposal_ttl_s
        await self.store.put_invite(
            proposal,
            Invite(
                recipient_id=recipient.user_id,
                created_at=now,
                expires_at=expires_at,
                helper_id=call.helper_id,
            ),
        )
        return proposal, expires_at

    # --- helpers ---------------------------------------------------------------------------------
    async def redeem(self, helper: Profile, code: str) -> Membership:
        _must_be(helper, Role.VOLUNTEER, "Only volunteers join a circle.")
        now = self.clock.now()
        tries = await self.store.hit(f"circle-redeem|{helper.user_id}", now, 3600.0)
        if tries > self.settings.redeems_per_hour:
            raise BrokerError(
                ErrorCode.RATE_LIMITED,
                "Too many invitation codes tried in the last hour. Please wait and try again.",
            )
        if not _CODE_SHAPE.fullmatch(normalise_code(code)):
            raise BrokerError(
                ErrorCode.BAD_MESSAGE,
                f"An invitation code is {CODE_LENGTH} letters and digits, such as "
                "'KM7P-3XQA-9RTW'.",
            )
        invite = await self.store.take_invite(code_key(code), helper.user_id, now)
        if invite is None:
            raise BrokerError(
                ErrorCode.NOT_FOUND,
                "That invitation code is not valid: it may have been used already or expired.",
            )
        return await self._join(invite.recipient_id, helper, now)

    async def proposals(self, helper: Profile) -> list[Proposal]:
        found = []
        for key, invite in await self.store.proposals_for(helper.user_id, self.clock.now()):
            recipient = await self.store.get_profile(invite.recipient_id)
            if recipient is not None:
                found.append(Proposal(key, recipient.display_name, invite.expires_at))
        return found

    async def answer(self, helper: Profile, proposal: str, accept: bool) -> Membership | None:
        _must_be(helper, Role.VOLUNTEER, "Only volunteers join a circle.")
        now = self.clock.now()
        invite = await self.store.take_invite(proposal, helper.user_id, now)
        if invite is None or invite.helper_id != helper.user_id:
            raise BrokerError(ErrorCode.NOT_FOUND, "You have no such request to join a circle.")
        if not accept:
            return None
        return await self._join(invite.recipient_id, helper, now)

    async def memberships(self, helper: Profile) -> list[Membership]:
        found = []
        for recipient_id, since in (await self.store.circles_of(helper.user_id)).items():
            recipient = await self.store.get_profile(recipient_id)
            found.append(
                Membership(
                    circle=self._handle("circle", recipient_id, helper.user_id),
                    display_name=recipient.display_name if recipient else "",
                    since=since,
                )
            )
        return sorted(found, key=lambda m: (m.since, m.circle))

    async def leave(self, helper: Profile, circle: str) -> None:
        for recipient_id in await self.store.circles_of(helper.user_id):
            if hmac.compare_digest(self._handle("circle", recipient_id, helper.user_id), circle):
                await self.store.circle_remove(recipient_id, helper.user_id)
                return
        raise BrokerError(ErrorCode.NOT_FOUND, "You are not in such a circle.")

    async def _join(self, recipient_id: str, helper: Profile, now: float) -> Membership:
        recipient = await self.store.get_profile(recipient_id)
        if recipient is None or recipient_id == helper.user_id:
            raise BrokerError(
                ErrorCode.NOT_FOUND,
                "That invitation code is not valid: it may have been used already or expired.",
            )
        if helper.user_id in recipient.blocked or recipient_id in helper.blocked:
            raise BrokerError(ErrorCode.CONFLICT, "You cannot join this circle.")
        members = await self.store.circle(recipient_id)
        if helper.user_id not in members and len(members) >= self.settings.max_members:
            raise BrokerError(
                ErrorCode.CONFLICT,
                f"This circle already has {self.settings.max_members} helpers, the most it may.",
            )
        await self.store.circle_add(recipient_id, helper.user_id, now)
        since = (await self.store.circle(recipient_id)).get(helper.user_id, now)
        return Membership(
            circle=self._handle("circle", recipient_id, helper.user_id),
            display_name=recipient.display_name,
            since=since,
        )


def _must_be(profile: Profile, role: Role, message: str) -> None:
    if profile.role is not role:
        raise BrokerError(ErrorCode.FORBIDDEN, message)
