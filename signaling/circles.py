"""REST routes of trusted circles (docs/protocol.md, "Trusted circles").

A recipient makes invitation codes, lists and removes members, and asks a past helper to join;
a volunteer redeems a code, answers a request, lists their circles and leaves one. Members and
circles are named by opaque handles and display names only, never by user ids.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker.circle import Member, Membership, Proposal
from broker.model import BrokerError, Role
from signaling.api import ApiError, authenticate, read_model


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# --- bodies ---------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JoinRequest(Strict):
    code: str = Field(min_length=1, max_length=64, description="the invitation code")


class ProposalRequest(Strict):
    call: str = Field(min_length=1, max_length=64, description="an ended call of the recipient")


class ProposalAnswer(Strict):
    accept: bool


class InvitationBody(BaseModel):
    code: str
    expires_at: str
    link: str = Field(description="the volunteer page, with the code, to share")


class MemberBody(BaseModel):
    member: str
    display_name: str
    since: str


class MembershipBody(BaseModel):
    circle: str
    display_name: str
    since: str


class ProposalBody(BaseModel):
    proposal: str
    display_name: str
    expires_at: str


class CircleBody(BaseModel):
    """``GET /v1/me/circle``: a recipient's members; a volunteer's circles and requests."""

    members: list[MemberBody] = Field(default_factory=list)
    circles: list[MembershipBody] = Field(default_factory=list)
    proposals: list[ProposalBody] = Field(default_factory=list)


class AskedBody(BaseModel):
    proposal: str
    expires_at: str


class AnsweredBody(BaseModel):
    joined: MembershipBody | None


def _member(m: Member) -> MemberBody:
    return MemberBody(member=m.member, display_name=m.display_name, since=_iso(m.since))


def _membership(m: Membership) -> MembershipBody:
    return MembershipBody(circle=m.circle, display_name=m.display_name, since=_iso(m.since))


def _proposal(p: Proposal) -> ProposalBody:
    return ProposalBody(
        proposal=p.proposal, display_name=p.display_name, expires_at=_iso(p.expires_at)
    )


def _json(body: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(body.model_dump(mode="json"), status=status)


# --- routes ---------------------------------------------------------------------------------------


async def invite(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    try:
        code, expires_at = await ctx.broker.circles.invite(profile)
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    link = f"/app/volunteer.html#circle={code}"
    return _json(InvitationBody(code=code, expires_at=_iso(expires_at), link=link), 201)


async def join(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    body = await read_model(request, JoinRequest, "{'code': the invitation code}")
    try:
        joined = await ctx.broker.circles.redeem(profile, body.code)
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return _json(_membership(joined))


async def my_circle(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    circles = ctx.broker.circles
    if profile.role is Role.RECIPIENT:
        return _json(CircleBody(members=[_member(m) for m in await circles.members(profile)]))
    if profile.role is Role.VOLUNTEER:
        return _json(
            CircleBody(
                circles=[_membership(m) for m in await circles.memberships(profile)],
                proposals=[_proposal(p) for p in await circles.proposals(profile)],
            )
        )
    raise ApiError(403, "forbidden", "Only recipients and volunteers have circles.")


async def remove_member(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    try:
        await ctx.broker.circles.remove(profile, request.match_info["member"])
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return web.Response(status=204)


async def leave(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    try:
        await ctx.broker.circles.leave(profile, request.match_info["circle"])
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return web.Response(status=204)


async def propose(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    body = await read_model(request, ProposalRequest, "{'call': one of your ended calls}")
    try:
        proposal, expires_at = await ctx.broker.circles.propose(profile, body.call)
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return _json(AskedBody(proposal=proposal, expires_at=_iso(expires_at)), 201)


async def answer(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    body = await read_model(request, ProposalAnswer, "{'accept': true or false}")
    try:
        joined = await ctx.broker.circles.answer(
            profile, request.match_info["proposal"], body.accept
        )
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return _json(AnsweredBody(joined=_membership(joined) if joined else None))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/me/circle/invitations", invite)
    app.router.add_post("/v1/circle/join", join)
    app.router.add_get("/v1/me/circle", my_circle)
    app.router.add_delete("/v1/me/circle/members/{member}", remove_member)
    app.router.add_delete("/v1/me/circle/circles/{circle}", leave)
    app.router.add_post("/v1/me/circle/proposals", propose)
    app.router.add_post("/v1/me/circle/proposals/{proposal}", answer)
