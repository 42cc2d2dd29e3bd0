"""Duty of care over HTTP: cases, restrictions, the audit log, statistics, and people's own data.

| route | who |
| --- | --- |
| ``/v1/admin/...`` | admins; an admin with an ``org`` claim sees only that organisation's agents and
  calls (anything else answers 404, as if it did not exist) |
| ``GET /v1/stats`` | admins (an organisation's admin: that organisation's figures) |
| ``GET /v1/stats/coverage`` | admins without an organisation |
| ``GET /v1/me/export``, ``DELETE /v1/me`` | anyone signed in, about themselves |

Every write goes through the broker, which records it in the audit log.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.coverage import coverage
from broker.model import (
    BrokerError,
    Call,
    EndReason,
    ErrorCode,
    Feedback,
    MultilineText,
    Profile,
    Role,
    TimeZone,
)
from broker.moderation import (
    AuditAction,
    AuditEntry,
    AuditQuery,
    Case,
    CaseAction,
    CaseQuery,
    CaseState,
    ReportReason,
    RestrictionKind,
)
from broker.privacy import iso, restriction_body
from broker.safety import CaseDetail
from broker.stats import Counts, days_between, midnight, report, summary, today
from signaling.api import (
    ApiError,
    authenticate,
    profile_body,
    read_model,
    validation_problem,
)
from signaling.app import CONTEXT, Context
from signaling.auth import Claims
from signaling.csvout import write_csv

MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_STATS_DAYS = 3660


# --- request bodies ---------------------------------------------------------------------------


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["dismiss", "warn", "suspend", "ban"]
    note: MultilineText = Field(min_length=1, max_length=2000)
    days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _days_with_suspend(self) -> Resolve:
        if self.days is not None and self.action != "suspend":
            raise ValueError("days: only a suspension has a number of days")
        return self


class Suspend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: MultilineText = Field(min_length=1, max_length=2000)
    days: int | None = Field(default=None, ge=1, le=3650)


class Because(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: MultilineText = Field(min_length=1, max_length=2000)


# --- helpers ------------------------------------------------------------------------------------


async def _admin(request: web.Request) -> tuple[Context, Claims]:
    ctx, claims, _ = await authenticate(request)
    if claims.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", "Only administrators use the administration API.")
    return ctx, claims


def _page(request: web.Request) -> tuple[int, int | None]:
    raw_limit = request.query.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise ApiError(400, "bad_request", f"limit: a whole number from 1 to {MAX_PAGE}.")
    raw_cursor = request.query.get("cursor")
    if raw_cursor is None or raw_cursor == "":
        return int(raw_limit), None
    if not raw_cursor.isdigit() or int(raw_cursor) < 1:
        raise ApiError(400, "bad_request", "cursor: the 'next' value of the previous page.")
    return int(raw_limit), int(raw_cursor)


def _choice(request: web.Request, name: str, allowed: type[Any]) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return allowed(raw)
    except ValueError:
        values = ", ".join(v.value for v in allowed)
        raise ApiError(400, "bad_request", f"{name}: one of {values}.") from None


def case_body(d: CaseDetail) -> dict[str, Any]:
    case, call = d.case, d.call
    return {
        "id": case.id,
        "state": case.state.value,
        "reason": case.reason.value,
        "opened_at": iso(case.opened_at),
        "org": case.org,
        "reporter": {"id": case.reporter.id, "role": case.reporter.role.value},
        "reported": {"id": case.reported.id, "role": case.reported.role.value},
        "comment": d.comment,
        "call": _call_facts(case, call),
        "feedback": [
            {
                "user": fb.user_id,
                "rating": fb.rating,
                "report": fb.report,
                "comment": fb.comment,
                "at": iso(fb.at),
            }
            for fb in d.feedback
        ],
        "resolution": (
            {
                "action": case.resolution.action.value,
                "note": case.resolution.note,
                "by": case.resolution.by,
                "at": iso(case.resolution.at),
                "days": case.resolution.days,
            }
            if case.resolution is not None
            else None
        ),
    }


def _call_facts(case: Case, call: Call | None) -> dict[str, Any]:
    if call is None:
        return {"id": case.call_id}
    duration = call.duration_s
    return {
        "id": call.id,
        "language": call.language,
        "topic": call.topic,
        "requested": iso(call.requested_at),
        "answered": iso(call.assigned_at),
        "ended": iso(call.ended_at),
        "end_reason": call.end_reason.value if call.end_reason else None,
        "duration_s": round(duration, 1) if duration is not None else None,
    }


async def _cases_body(ctx: Context, cases: list[Case]) -> list[dict[str, Any]]:
    return [case_body(await ctx.broker.safety.detail(c)) for c in cases]


async def _target(ctx: Context, claims: Claims, user_id: str) -> Profile:
    """The user an admin acts on; an organisation's admin reaches only its agents."""
    profile = await ctx.store.get_profile(user_id)
    if profile is None or (
        claims.org is not None and (profile.role is not Role.AGENT or profile.org != claims.org)
    ):
        raise ApiError(404, "not_found", f"There is no user {user_id!r}.")
    return profile


# --- overview and cases ------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    day = today(ctx.clock.now())
    counts = (await ctx.store.day_counts([day]))[0]
    scope = f"org:{claims.org}" if claims.org else "all"
    figures = summary(counts[scope]) if scope in counts else summary_empty()
    if claims.org is not None:
        on_duty = sum(
            1 for a in await ctx.store.agents(claims.org) if a.state == "available" and a.connected
        )
    else:
        on_duty = await ctx.store.on_duty_count()
        for org in await ctx.store.list_orgs():
            on_duty += sum(
                1 for a in await ctx.store.agents(org.id) if a.state == "available" and a.connected
            )
    open_cases = await ctx.store.count_cases(CaseQuery(state=CaseState.OPEN, org=claims.org))
    answered_pct = (
        round(100.0 * figures["answered"] / figures["created"], 1) if figures["created"] else None
    )
    return web.json_response(
        {
            "today": {
                "day": day,
                "created": figures["created"],
                "answered": figures["answered"],
                "answered_pct": answered_pct,
                "answer_s": {"p50": figures["answer_s"]["p50"], "p90": figures["answer_s"]["p90"]},
            },
            "helpers_on_duty": on_duty,
            "open_cases": open_cases,
        }
    )


def summary_empty() -> dict[str, Any]:
    return summary(Counts())


async def list_cases(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    limit, cursor = _page(request)
    user = request.query.get("user") or None
    if user is not None and len(user) > 128:
        raise ApiError(400, "bad_request", "user: a user id of at most 128 characters.")
    query = CaseQuery(
        state=_choice(request, "state", CaseState),
        reason=_choice(request, "reason", ReportReason),
        user=user,
        org=claims.org,
    )
    cases = await ctx.store.cases(query, cursor, limit + 1)
    more = len(cases) > limit
    cases = cases[:limit]
    return web.json_response(
        {
            "cases": await _cases_body(ctx, cases),
            "next": str(cases[-1].seq) if more and cases else None,
        }
    )


async def get_case(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    try:
        case = await ctx.broker.safety.get_case(request.match_info["id"], claims.org)
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return web.json_response(case_body(await ctx.broker.safety.detail(case)))


async def resolve_case(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    body = await read_model(request, Resolve, "the decision: action, note (and days)")
    try:
        case, events = await ctx.broker.resolve_case(
            request.match_info["id"],
            CaseAction(body.action),
            body.note,
            body.days,
            claims.sub,
            claims.org,
        )
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    ctx.hub.deliver(events)
    if case.resolution is not None and case.resolution.action is CaseAction.BAN:
        await _sign_out_banned(ctx, case.reported.id)
    return web.json_response(case_body(await ctx.broker.safety.detail(case)))


# --- users --------------------------------------------------------------------------------------


async def get_user(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    profile = await _target(ctx, claims, request.match_info["id"])
    uid = profile.user_id
    calls = await ctx.store.calls_of(uid)
    scope = CaseQuery(user=uid, org=claims.org)
    mine = await ctx.store.cases(scope, None, MAX_PAGE)
    received = [c for c in mine if c.reported.id == uid]
    given = [c for c in mine if c.reporter.id == uid]
    restriction = await ctx.broker.safety.restriction(uid)
    return web.json_response(
        {
            "profile": profile_body(profile),
            "counts": {
                "calls": len(calls),
                "answered": sum(1 for c in calls if c.assigned_at is not None),
                "reports_received": len(received),
                "reports_given": len(given),
                "warnings": await ctx.broker.safety.warnings(uid),
            },
            "reports_received": await _cases_body(ctx, received),
            "reports_given": await _cases_body(ctx, given),
            "restriction": restriction_body(restriction) if restriction else None,
        }
    )


async def suspend_user(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    profile = await _target(ctx, claims, request.match_info["id"])
    body = await read_model(request, Suspend, "the reason (and days)")
    restriction, events = await ctx.broker.restrict(
        profile, RestrictionKind.SUSPENDED, body.reason, claims.sub, Role.ADMIN.value, body.days
    )
    ctx.hub.deliver(events)
    return web.json_response({"restriction": restriction_body(restriction)})


async def ban_user(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    profile = await _target(ctx, claims, request.match_info["id"])
    body = await read_model(request, Because, "the reason")
    restriction, events = await ctx.broker.restrict(
        profile, RestrictionKind.BANNED, body.reason, claims.sub, Role.ADMIN.value
    )
    ctx.hub.deliver(events)
    await _sign_out_banned(ctx, profile.user_id)
    return web.json_response({"restriction": restriction_body(restriction)})


async def _sign_out_banned(ctx: Context, user_id: str) -> None:
    """A ban ends the person's live sessions on every node (error ``suspended``, close 4403),
    and tokens issued before it are refused at ``hello`` from then on."""
    restriction = await ctx.broker.safety.restriction(user_id)
    if restriction is None or restriction.kind is not RestrictionKind.BANNED:
        return
    await ctx.hub.revoke(
        user_id,
        before=restriction.since,
        error_code=ErrorCode.SUSPENDED.value,
        message=restriction.message,
        extra={"until": None},
    )


async def reinstate_user(request: web.Request) -> web.Response:
    ctx, claims = await _admin(request)
    profile = await _target(ctx, claims, request.match_info["id"])
    body = await read_model(request, Because, "the reason")
    try:
        await ctx.broker.reinstate(profile, body.reason, claims.sub, Role.ADMIN.value)
    except BrokerError as exc:
        raise ApiError.refused(exc) from None
    return web.json_response({"restriction": None})


# --- the audit log -----------------------------------------------------------------------------

AUDIT_COLUMNS = ["id", "at", "actor", "actor_role", "action", "target", "reason", "detail"]


def entry_body(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "actor_role": entry.actor_role,
        "action": entry.action.value,
        "target": entry.target,
        "reason": entry.reason,
        "detail": entry.detail,
    }


async def audit_log(request: web.Request) -> web.StreamResponse:
    ctx, claims = await _admin(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_request", "format: json or csv.")
    limit, cursor = _page(request)
    for name in ("actor", "target"):
        if len(request.query.get(name, "")) > 128:
            raise ApiError(400, "bad_request", f"{name}: at most 128 characters.")
    query = AuditQuery(
        actor=request.query.get("actor") or None,
        target=request.query.get("target") or None,
        action=_choice(request, "action", AuditAction),
        org=claims.org,
    )
    entries = await ctx.store.audit(query, cursor, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    rows = [entry_body(e) for e in entries]
    following = str(entries[-1].seq) if more and entries else None
    if fmt == "json":
        return web.json_response({"entries": rows, "next": following})
    for row in rows:
        row["detail"] = _json_text(row["detail"])
    headers = {"Content-Disposition": 'attachment; filename="audit.csv"'}
    if following:
        headers["Link"] = f'<?cursor={following}>; rel="next"'
    # Reasons and notes are typed by people: defused like every CSV the product writes.
    return web.Response(
        text=write_csv(AUDIT_COLUMNS, rows), content_type="text/csv", headers=headers
    )


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --- statistics ----------------------------------------------------------------------------------


def _whole_day(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: a Unix time in seconds.") from None
    if not 0 <= value < 1e11:
        raise ApiError(400, "bad_request", f"{name}: a Unix time in seconds.")
    return value


async def stats(request: web.Request) -> web.Response:
    ctx, claims = await _admin_stats(request)
    now = ctx.clock.now()
    tomorrow = midnight(today(now)) + 86400.0
    since = _whole_day(request, "since", 0.0)
    until = _whole_day(request, "until", tomorrow)
    if since == 0.0 and "since" not in request.query:
        since = until - 366 * 86400.0
    days = days_between(since, until)
    if len(days) > MAX_STATS_DAYS:
        raise ApiError(400, "bad_request", f"since/until: at most {MAX_STATS_DAYS} days at once.")
    counts = await ctx.store.day_counts(days)
    scope = f"org:{claims.org}" if claims.org else None
    return web.json_response(report(zip(days, counts, strict=True), scope))


class CoverageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(default=30, ge=1, le=90, description="how many days of requests")
    tz: TimeZone = Field(default="UTC", description="the time zone of the hours of the week")


async def stats_coverage(request: web.Request) -> web.Response:
    """``GET /v1/stats/coverage``: requests, answered share, p90 answer time and volunteers
    on duty by language and local hour of the week (``broker.coverage``)."""
    ctx, claims = await _admin_stats(request)
    if claims.org:
        raise ApiError(
            403, "forbidden", "Coverage is about the volunteer network: for its administrators."
        )
    raw: dict[str, object] = dict(request.query)
    if "days" in raw:
        days = str(raw["days"])
        if not days.isdigit():
            raise ApiError(400, "bad_request", "days: a whole number from 1 to 90.")
        raw["days"] = int(days)
    try:
        asked = CoverageQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    report = await coverage(ctx.store, ctx.clock.now(), asked.days, asked.tz)
    return web.json_response(report.model_dump(mode="json"))


async def _admin_stats(request: web.Request) -> tuple[Context, Claims]:
    ctx, claims, _ = await authenticate(request)
    if claims.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", "Statistics are for administrators.")
    return ctx, claims


# --- people's own data ---------------------------------------------------------------------------


async def export_me(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    body = await ctx.broker.privacy.export(profile)
    return web.json_response(
        body,
        headers={
            "Content-Disposition": 'attachment; filename="my-data.json"',
            "Cache-Control": "no-store",
        },
    )


async def erase_me(request: web.Request) -> web.Response:
    ctx, _, profile = await authenticate(request)
    # Their sessions close first, everywhere, so that none writes about them after the erasure.
    await ctx.hub.sign_out(
        profile.user_id,
        ErrorCode.UNAUTHENTICATED.value,
        "Your account and what the service held about you were erased.",
    )
    _, events = await ctx.broker.erase(profile)
    ctx.hub.deliver(events)
    # Messages parked for the person's sessions (their resume grace) go too.
    await ctx.hub.unpark_all(profile.user_id)
    return web.json_response({"erased": True})


# --- demo mode ------------------------------------------------------------------------------------

DEMO_VOLUNTEER = "demo-volunteer-casey"
DEMO_REPORTS: list[tuple[str, str, ReportReason, str]] = [
    # (recipient, who reports, reason, comment)
    ("demo-recipient-ana", "recipient", ReportReason.INAPPROPRIATE, "Made personal remarks."),
    ("demo-recipient-ben", "recipient", ReportReason.POOR_QUALITY, "Could not read the label."),
    ("demo-recipient-cho", "volunteer", ReportReason.ABUSIVE, "Shouted at me."),
]


async def seed_demo_cases(ctx: Context) -> None:
    """``--demo``: a few ended calls and reports, so that the console has cases to show: two
    open against a demo volunteer (under the suspension threshold) and one resolved."""
    store, now = ctx.store, ctx.clock.now()
    if await store.count_cases(CaseQuery()) > 0:
        return  # seeded before (a Redis store outlives the process)
    await store.put_profile(
        Profile(user_id=DEMO_VOLUNTEER, role=Role.VOLUNTEER, display_name="Casey (demo)")
    )
    for n, (rec_id, reporter, reason, comment) in enumerate(DEMO_REPORTS):
        await store.put_profile(
            Profile(user_id=rec_id, role=Role.RECIPIENT, display_name=rec_id.split("-")[-1])
        )
        started = now - (n + 1) * 3 * 3600.0
        call = Call(
            id=f"c_demo{n}",
            recipient_id=rec_id,
            recipient_name=rec_id.split("-")[-1].title(),
            language="en",
            languages=["en"],
            topic="Reading a letter",
            requested_at=started,
        )
        if not await store.create_call(call):
            continue
        day = datetime.fromtimestamp(started, UTC).date().isoformat()
        await store.reserve_ring(call.id, DEMO_VOLUNTEER, day, 1000, started + 5)
        await store.assign(call.id, DEMO_VOLUNTEER, "Casey (demo)", Role.VOLUNTEER, started + 9)
        done = await store.finish(call.id, EndReason.COMPLETED, Role.RECIPIENT, started + 300)
        if done is None:
            continue
        who = rec_id if reporter == "recipient" else DEMO_VOLUNTEER
        await store.add_feedback(
            Feedback(
                call_id=call.id,
                user_id=who,
                rating="down",
                report=reason.value,
                comment=comment,
                at=started + 320,
            )
        )
        await store.block(who, done.call.peer_of(who) or "")
        case, _ = await ctx.broker.safety.report(done.call, who, reason)
        if reporter == "volunteer":
            await ctx.broker.safety.resolve(
                case.id, CaseAction.WARN, "Demo: warned about conduct.", None, "demo-admin", None
            )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/overview", overview)
    app.router.add_get("/v1/admin/cases", list_cases)
    app.router.add_get("/v1/admin/cases/{id}", get_case)
    app.router.add_post("/v1/admin/cases/{id}/resolve", resolve_case)
    app.router.add_get("/v1/admin/users/{id}", get_user)
    app.router.add_post("/v1/admin/users/{id}/suspend", suspend_user)
    app.router.add_post("/v1/admin/users/{id}/ban", ban_user)
    app.router.add_post("/v1/admin/users/{id}/reinstate", reinstate_user)
    app.router.add_get("/v1/admin/audit", audit_log)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/stats/coverage", stats_coverage)
    app.router.add_get("/v1/me/export", export_me)
    app.router.add_delete("/v1/me", erase_me)
    ctx = app[CONTEXT]
    if ctx.settings.demo:

        async def demo(app: web.Application) -> None:
            await seed_demo_cases(ctx)

        app.on_startup.append(demo)
