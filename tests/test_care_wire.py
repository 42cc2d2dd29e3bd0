"""Duty of care over the wire: reports that suspend a helper (WebSocket and push), the admin
API with its audit log, export and erasure, each route's refusals. A real server on loopback."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.helpers import Client, Server, start_server
from tests.push_standins import wait_until
from tests.redis_procs import RedisServer
from tests.test_orgs_wire import org_body
from tests.test_push import TOKEN_A, PushEnv, add_device, push_env, pusher  # noqa: F401
from tests.test_store_contract import _dump

EN: dict[str, Any] = {"languages": ["en"], "timezone": "Europe/London"}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with start_server() as s:
        yield s


async def api(
    server: Server,
    method: str,
    path: str,
    sub: str | None = None,
    role: str = "admin",
    body: Any = None,
    **claims: Any,
) -> tuple[int, Any]:
    headers = server.auth(sub, role, **claims) if sub else {}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(method, server.url + path, json=body) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def helped_and_reported(
    server: Server, vol: Client, recipient: str, comment: str = "He was rude"
) -> str:
    rec = await server.connect(recipient, "recipient", name=recipient, **EN)
    call = (await rec.request({"type": "call.request", "topic": "post"}))["call"]
    await vol.expect("call.ring", call=call)
    await vol.request({"type": "call.accept", "call": call})
    await rec.expect("call.assigned")
    await rec.request({"type": "call.end", "call": call})
    await vol.expect("call.ended", call=call)
    ack = await rec.request(
        {
            "type": "call.feedback",
            "call": call,
            "rating": "down",
            "report": "abusive",
            "comment": comment,
        }
    )
    assert ack["type"] == "ack", ack
    await rec.close()
    return call


async def test_three_reports_suspend_a_volunteer_until_an_admin_reinstates(
    push_env: PushEnv,  # noqa: F811
) -> None:
    apns = push_env.apns
    async with start_server(**push_env.settings, push_also_when_connected=True) as server:
        vol = await server.connect("val", "volunteer", name="Val", **EN)
        assert "restriction" not in vol.welcome
        await vol.request({"type": "availability", "available": True})
        await add_device(server, "val", platform="apns", token=TOKEN_A)
        for i in (1, 2, 3):
            await helped_and_reported(server, vol, f"r{i}")
        told = await vol.expect("availability", available=False)
        assert told == {"type": "availability", "available": False, "reason": "suspended"}
        await pusher(server).drain()
        pushed = len(apns.pushes)
        # A fourth request rings nobody: not on the WebSocket, not by push.
        r4 = await server.connect("r4", "recipient", name="r4", **EN)
        status = await r4.request({"type": "call.request"})
        assert status["notified"] == 0
        assert not [m for m in await vol.quiet(0.3) if m["type"] == "call.ring"]
        await pusher(server).drain()
        assert len(apns.pushes) == pushed
        refused = await vol.request({"type": "availability", "available": True})
        assert refused["type"] == "error" and refused["code"] == "suspended"
        assert refused["until"] is None and "review" in refused["message"]
        again = await server.connect("val", "volunteer", name="Val", **EN)
        assert again.welcome["restriction"]["kind"] == "suspended"
        assert again.welcome["restriction"]["until"] is None
        await again.close()
        # The audit log shows the system's suspension.
        status_code, log = await api(server, "GET", "/v1/admin/audit?target=val", "boss")
        assert status_code == 200
        assert [(e["action"], e["actor"]) for e in log["entries"]] == [("user.suspend", "system")]
        # An admin reinstates; the volunteer goes on duty and is rung again, by push too.
        code, body = await api(
            server, "POST", "/v1/admin/users/val/reinstate", "boss", body={"reason": "Cleared"}
        )
        assert (code, body) == (200, {"restriction": None})
        back = await vol.request({"type": "availability", "available": True})
        assert back["type"] == "availability" and back["available"] is True
        await r4.request({"type": "call.cancel", "call": status["call"]})
        fresh = await r4.request({"type": "call.request"})
        assert fresh["notified"] == 1
        await vol.expect("call.ring", call=fresh["call"])
        await wait_until(
            lambda: any(
                p.payload.get("call") == fresh["call"] and p.payload["type"] == "call.ring"
                for p in apns.pushes
            ),
            what="the ring pushed after reinstatement",
        )
        code, log = await api(server, "GET", "/v1/admin/audit?target=val", "boss")
        assert [(e["action"], e["actor"]) for e in log["entries"]] == [
            ("user.reinstate", "boss"),
            ("user.suspend", "system"),
        ]
        # Three open cases, with the call's facts and the reporter's comment.
        code, cases = await api(server, "GET", "/v1/admin/cases?user=val&state=open", "boss")
        assert code == 200 and len(cases["cases"]) == 3 and cases["next"] is None
        case = cases["cases"][0]
        assert case["reported"] == {"id": "val", "role": "volunteer"}
        assert case["reason"] == "abusive" and case["comment"] == "He was rude"
        assert case["call"]["topic"] == "post" and case["call"]["end_reason"] == "completed"
        await r4.close()
        await vol.close()


async def test_resolving_cases_and_the_users_view(server: Server) -> None:
    vol = await server.connect("val", "volunteer", name="Val", **EN)
    await vol.request({"type": "availability", "available": True})
    call = await helped_and_reported(server, vol, "r1")
    code, page = await api(server, "GET", "/v1/admin/cases?limit=1", "boss")
    assert code == 200 and len(page["cases"]) == 1 and page["next"] is None
    case_id = page["cases"][0]["id"]
    code, one = await api(server, "GET", f"/v1/admin/cases/{case_id}", "boss")
    assert code == 200 and one["call"]["id"] == call and one["state"] == "open"
    assert [f["user"] for f in one["feedback"]] == ["r1"]
    code, resolved = await api(
        server,
        "POST",
        f"/v1/admin/cases/{case_id}/resolve",
        "boss",
        body={"action": "suspend", "note": "Two weeks off", "days": 14},
    )
    assert code == 200 and resolved["state"] == "resolved"
    assert resolved["resolution"]["action"] == "suspend" and resolved["resolution"]["days"] == 14
    told = await vol.expect("availability", available=False)
    assert told["reason"] == "suspended"
    refused = await vol.request({"type": "availability", "available": True})
    assert refused["code"] == "suspended" and refused["until"] is not None
    code, again = await api(
        server,
        "POST",
        f"/v1/admin/cases/{case_id}/resolve",
        "boss",
        body={"action": "dismiss", "note": "again"},
    )
    assert code == 409 and again["error"] == "conflict"
    code, user = await api(server, "GET", "/v1/admin/users/val", "boss")
    assert code == 200
    assert user["counts"]["reports_received"] == 1 and user["counts"]["calls"] == 1
    assert user["restriction"]["kind"] == "suspended"
    assert [c["id"] for c in user["reports_received"]] == [case_id]
    code, rec_view = await api(server, "GET", "/v1/admin/users/r1", "boss")
    assert rec_view["counts"]["reports_given"] == 1
    code, overview = await api(server, "GET", "/v1/admin/overview", "boss")
    assert code == 200 and overview["open_cases"] == 0
    assert overview["today"]["created"] == 1 and overview["today"]["answered_pct"] == 100.0
    code, text = await api(server, "GET", "/v1/admin/audit?format=csv", "boss")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["action"] for r in rows] == ["user.suspend", "case.resolve"]
    assert rows[1]["reason"] == "Two weeks off" and rows[1]["actor"] == "boss"
    # A ban ends the person's open session at once, and the sign-in it used is revoked.
    signed_in = await server.connect("r1", "recipient", **EN)
    code, body = await api(server, "POST", "/v1/admin/users/r1/ban", "boss", body={"reason": "x"})
    assert code == 200 and body["restriction"]["kind"] == "banned"
    got, close_code = await signed_in.until_closed()
    assert close_code == 4403
    assert got[-1]["code"] == "suspended" and got[-1]["until"] is None
    stale = await server.connect("r1", "recipient", hello=False)
    old_token = server.token("r1", "recipient", now=time.time() - 60, **EN)
    refused = await stale.request({"type": "hello", "token": old_token})
    assert refused["code"] == "unauthenticated"
    # A sign-in after the ban is told about it, and may not ask for help.
    r1 = await server.connect("r1", "recipient", now=time.time() + 1, **EN)
    assert r1.welcome["restriction"]["kind"] == "banned"
    refused = await r1.request({"type": "call.request"})
    assert refused["code"] == "suspended"
    code, stats = await api(server, "GET", "/v1/stats", "boss")
    assert code == 200 and stats["monthly"][0]["created"] == 1
    assert (
        stats["total"]["completed_pct"] == 100.0
        and sum(b["count"] for b in stats["answer_histogram"]) == 1
    )
    await r1.close()
    await vol.close()


async def test_an_organisations_admin_sees_only_its_own(server: Server) -> None:
    code, _ = await api(server, "PUT", "/v1/orgs/o1", "boss", body=org_body())
    assert code in (200, 201), _
    agent = await server.connect("ag1", "agent", org="o1", **EN)
    code, view = await api(server, "GET", "/v1/admin/users/ag1", "o1boss", org="o1")
    assert code == 200 and view["profile"]["org"] == "o1"
    code, _ = await api(server, "GET", "/v1/admin/users/ag1", "o2boss", org="o2")
    assert code == 404
    vol = await server.connect("val", "volunteer", **EN)
    code, _ = await api(server, "GET", "/v1/admin/users/val", "o1boss", org="o1")
    assert code == 404
    code, _ = await api(
        server, "POST", "/v1/admin/users/val/suspend", "o1boss", body={"reason": "x"}, org="o1"
    )
    assert code == 404
    code, body = await api(
        server,
        "POST",
        "/v1/admin/users/ag1/suspend",
        "o1boss",
        body={"reason": "Complaints", "days": 2},
        org="o1",
    )
    assert code == 200 and body["restriction"]["until"] is not None
    told = await agent.expect("agent.status", reason="suspended")
    assert told["state"] == "away"
    refused = await agent.request({"type": "agent.status", "state": "available"})
    assert refused["code"] == "suspended"
    code, log = await api(server, "GET", "/v1/admin/audit", "o1boss", org="o1")
    assert [e["action"] for e in log["entries"]] == ["user.suspend", "org.put"]
    code, log = await api(server, "GET", "/v1/admin/audit", "o2boss", org="o2")
    assert log["entries"] == []
    await agent.close()
    await vol.close()


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/admin/overview", None),
    ("GET", "/v1/admin/cases", None),
    ("GET", "/v1/admin/cases/case_1", None),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "dismiss", "note": "n"}),
    ("GET", "/v1/admin/users/val", None),
    ("POST", "/v1/admin/users/val/suspend", {"reason": "r"}),
    ("POST", "/v1/admin/users/val/ban", {"reason": "r"}),
    ("POST", "/v1/admin/users/val/reinstate", {"reason": "r"}),
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_admin_route_needs_an_admin(
    server: Server, method: str, path: str, body: Any
) -> None:
    code, answer = await api(server, method, path, None, body=body)
    assert code == 401 and answer["error"] == "unauthenticated"
    for role in ("recipient", "volunteer", "agent"):
        claims = {"org": "o1"} if role == "agent" else {}
        code, answer = await api(server, method, path, "someone", role, body=body, **claims)
        assert code == 403 and answer["error"] == "forbidden", (role, answer)


BAD: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/admin/cases?limit=0", None, "limit"),
    ("GET", "/v1/admin/cases?limit=201", None, "limit"),
    ("GET", "/v1/admin/cases?cursor=abc", None, "cursor"),
    ("GET", "/v1/admin/cases?state=closed", None, "state"),
    ("GET", "/v1/admin/cases?reason=rude", None, "reason"),
    ("GET", "/v1/admin/audit?action=user.delete", None, "action"),
    ("GET", "/v1/admin/audit?format=xml", None, "format"),
    ("GET", "/v1/stats?since=soon", None, "since"),
    ("GET", "/v1/stats?since=0&until=1000000000", None, "days"),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "delete", "note": "n"}, "action"),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "dismiss"}, "note"),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "dismiss", "note": ""}, "note"),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "warn", "note": "n", "days": 3}, "days"),
    (
        "POST",
        "/v1/admin/cases/case_1/resolve",
        {"action": "suspend", "note": "n", "days": 0},
        "days",
    ),
    ("POST", "/v1/admin/cases/case_1/resolve", [1], "object"),
    ("POST", "/v1/admin/users/val/suspend", {"reason": "r", "days": "two"}, "days"),
    ("POST", "/v1/admin/users/val/suspend", {}, "reason"),
    ("POST", "/v1/admin/users/val/ban", {"reason": "r", "extra": 1}, "extra"),
    ("POST", "/v1/admin/users/val/reinstate", {"reason": 5}, "reason"),
    # What an admin writes is shown to other admins: the text rules hold here too.
    ("POST", "/v1/admin/users/val/suspend", {"reason": "spoof\u202egnp.exe"}, "reason"),
    ("POST", "/v1/admin/users/val/ban", {"reason": "a\x00b"}, "reason"),
    ("POST", "/v1/admin/cases/case_1/resolve", {"action": "warn", "note": "x\x07"}, "note"),
]


@pytest.mark.parametrize(("method", "path", "body", "names"), BAD)
async def test_bad_queries_and_bodies_are_400_naming_the_field(
    server: Server, method: str, path: str, body: Any, names: str
) -> None:
    vol = await server.connect("val", "volunteer", **EN)  # so that the user exists
    code, answer = await api(server, method, path, "boss", body=body)
    assert code == 400 and answer["error"] == "bad_request", answer
    assert names in answer["message"], answer
    await vol.close()


async def test_unknown_cases_and_users_are_404_and_reinstating_nobody_409(
    server: Server,
) -> None:
    vol = await server.connect("val", "volunteer", **EN)
    code, answer = await api(server, "GET", "/v1/admin/cases/case_9", "boss")
    assert code == 404 and answer["error"] == "not_found"
    code, _ = await api(
        server,
        "POST",
        "/v1/admin/cases/case_9/resolve",
        "boss",
        body={"action": "warn", "note": "n"},
    )
    assert code == 404
    code, _ = await api(server, "GET", "/v1/admin/users/nobody", "boss")
    assert code == 404
    code, answer = await api(
        server, "POST", "/v1/admin/users/val/reinstate", "boss", body={"reason": "r"}
    )
    assert code == 409 and answer["error"] == "conflict"
    await vol.close()


async def test_a_bad_report_reason_is_a_bad_message_naming_the_choices(server: Server) -> None:
    vol = await server.connect("val", "volunteer", **EN)
    answer = await vol.request(
        {"type": "call.feedback", "call": "c_1", "rating": "down", "report": "rude"}
    )
    assert answer["code"] == "bad_message"
    for reason in ("inappropriate", "abusive", "unsafe", "privacy", "poor_quality", "other"):
        assert reason in answer["message"]
    await vol.close()


# --- people's own data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_export_then_erasure_leaves_no_trace(
    backend: str,
    request: pytest.FixtureRequest,
    push_env: PushEnv,  # noqa: F811
) -> None:
    overrides: dict[str, Any] = dict(push_env.settings)
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flush()
        overrides["store_url"] = redis.url
    texts = ["Reading my bank letter", "He was rude to me", "I use a white cane"]
    uid = "erin-7f3a"
    async with start_server(**overrides) as server:
        vol = await server.connect("val", "volunteer", name="Val", **EN)
        await vol.request({"type": "availability", "available": True})
        rec = await server.connect(uid, "recipient", name="Erin", **EN)
        code, _ = await api(
            server, "PUT", "/v1/me/profile", uid, "recipient", body={"note": texts[2]}
        )
        assert code == 200
        call = (await rec.request({"type": "call.request", "topic": texts[0]}))["call"]
        await vol.expect("call.ring", call=call)
        await vol.request({"type": "call.accept", "call": call})
        await rec.request({"type": "call.end", "call": call})
        await rec.request(
            {
                "type": "call.feedback",
                "call": call,
                "rating": "down",
                "report": "abusive",
                "comment": texts[1],
            }
        )
        code, export = await api(server, "GET", "/v1/me/export", uid, "recipient")
        assert code == 200
        assert export["profile"]["user_id"] == uid and export["profile"]["note"] == texts[2]
        assert export["calls"][0]["call"] == call and export["calls"][0]["topic"] == texts[0]
        assert export["feedback_given"][0]["comment"] == texts[1]
        assert export["blocks"] == ["val"] and export["restriction"] is None
        assert export["reports_made"][0]["reason"] == "abusive"
        assert export["devices"] == []
        # A helper's devices, with their push addresses shortened; not the recipient's topic.
        await add_device(server, "val", platform="apns", token="ab" * 31 + "cdef")
        code, theirs = await api(server, "GET", "/v1/me/export", "val", "volunteer")
        assert [d["address"] for d in theirs["devices"]] == ["ababcdef"]
        assert "ab" * 31 not in str(theirs)
        assert theirs["calls"][0]["topic"] is None and theirs["calls"][0]["role"] == "volunteer"
        # Still signed in when erased: the session is ended first, for good.
        code, answer = await api(server, "DELETE", "/v1/me", uid, "recipient")
        assert (code, answer) == (200, {"erased": True})
        got, close_code = await rec.until_closed()
        assert close_code == 4403
        assert got[-1]["type"] == "error" and got[-1]["code"] == "unauthenticated"
        dump = await _dump(server.ctx.store)
        assert uid not in dump
        for text in texts:
            assert text not in dump
        # The volunteer's side of the call stays, with the recipient as a pseudonym.
        code, cases = await api(server, "GET", "/v1/admin/cases", "boss")
        assert cases["cases"][0]["reporter"]["id"].startswith("p_")
        assert cases["cases"][0]["comment"] is None
        code, log = await api(server, "GET", "/v1/admin/audit?action=user.erase", "boss")
        assert log["entries"][0]["target"] == cases["cases"][0]["reporter"]["id"]
        await vol.close()


async def test_export_and_erasure_need_a_token(server: Server) -> None:
    code, answer = await api(server, "GET", "/v1/me/export")
    assert code == 401 and answer["error"] == "unauthenticated"
    code, answer = await api(server, "DELETE", "/v1/me")
    assert code == 401


async def test_demo_mode_signs_in_an_admin_and_has_cases_to_show() -> None:
    async with start_server(demo=True) as server:
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "/v1/demo/token", json={"role": "admin"}) as resp,
        ):
            assert resp.status == 200
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(server.url + "/v1/admin/cases") as resp,
        ):
            assert resp.status == 200
            cases = (await resp.json())["cases"]
        assert len(cases) >= 3
        open_against_volunteer = [
            c for c in cases if c["state"] == "open" and c["reported"]["role"] == "volunteer"
        ]
        assert open_against_volunteer and open_against_volunteer[0]["call"]["topic"]
        assert any(c["state"] == "resolved" for c in cases)


async def test_the_audit_csv_defuses_formulas_typed_by_an_admin(server: Server) -> None:
    vol = await server.connect("val", "volunteer", name="Val", **EN)
    reason = '=HYPERLINK("http://example.invalid","click")'
    code, _ = await api(
        server, "POST", "/v1/admin/users/val/suspend", "boss", body={"reason": reason}
    )
    assert code == 200
    code, text = await api(server, "GET", "/v1/admin/audit?format=csv", "boss")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["action"] == "user.suspend" and rows[0]["reason"] == "'" + reason
    await vol.close()
