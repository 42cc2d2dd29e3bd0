"""Session lifetime over a real server on 127.0.0.1: tokens that expire, ``auth.refresh``,
revoked sign-ins and the per-user session cap."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import jwt
import websockets

from signaling.auth import mint
from tests.helpers import SECRET, Client, Server, start_server

EN_LONDON: dict[str, Any] = {"languages": ["en"], "timezone": "Europe/London"}
# No leeway, so that a token's exp is when its session ends; auth.expiring a second before.
SHORT: dict[str, Any] = {"jwt_leeway_s": 0, "token_warning_s": 1}


async def closed_with(client: Client, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int]:
    return await client.until_closed(timeout)


async def connect_with(server: Server, token: str) -> Client:
    ws = await websockets.connect(server.ws_url, proxy=None)
    client = Client(ws, "?")
    welcome = await client.request({"type": "hello", "token": token})
    assert welcome["type"] == "welcome", welcome
    client.welcome = welcome
    return client


async def refused_hello(server: Server, token: str) -> tuple[dict[str, Any], int]:
    ws = await websockets.connect(server.ws_url, proxy=None)
    client = Client(ws, "?")
    answer = await client.request({"type": "hello", "token": token})
    _, code = await closed_with(client)
    return answer, code


async def until_next_second() -> None:
    """Tokens carry whole-second ``iat``s: one minted after this is issued after now."""
    now = time.time()
    await asyncio.sleep(math.ceil(now) - now + 0.05)


# --- expiry -----------------------------------------------------------------------------------


async def test_a_session_is_warned_then_closed_4401_when_its_token_expires() -> None:
    async with start_server(**SHORT) as server:
        token = mint(SECRET, "v1", "volunteer", ttl_s=2)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        client = await connect_with(server, token)
        assert client.welcome["expires_at"] == exp
        warning = await client.expect("auth.expiring", timeout=3)
        assert warning["expires_at"] == exp and 0 <= warning["expires_in_s"] <= 1.0
        got, code = await closed_with(client, timeout=4)
        assert code == 4401
        assert got[-1]["type"] == "error" and got[-1]["code"] == "unauthenticated"
        assert "expired" in got[-1]["message"]
        assert time.time() >= exp - 0.05  # not before the token's expiry


async def test_the_session_expiry_honours_the_leeway() -> None:
    async with start_server(jwt_leeway_s=7, token_warning_s=0) as server:
        token = mint(SECRET, "v1", "volunteer", ttl_s=60)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        client = await connect_with(server, token)
        assert client.welcome["expires_at"] == exp + 7
        await client.close()


async def test_refreshing_in_time_keeps_the_session_open() -> None:
    async with start_server(**SHORT) as server:
        client = await connect_with(server, mint(SECRET, "v1", "volunteer", ttl_s=2))
        await client.expect("auth.expiring", timeout=3)
        fresh = mint(SECRET, "v1", "volunteer", ttl_s=3600)
        answer = await client.request({"type": "auth.refresh", "token": fresh})
        exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
        assert answer == {"type": "auth.refreshed", "expires_at": exp, "ref": answer["ref"]}
        await asyncio.sleep(2.5)  # past the first token's expiry
        assert (await client.request({"type": "ping"}))["type"] == "pong"
        assert [m for m in await client.quiet(0.2) if m["type"] == "auth.expiring"] == []
        await client.close()


def _bad_refresh_tokens() -> dict[str, str]:
    now = time.time()
    return {
        "other-user": mint(SECRET, "v2", "volunteer", ttl_s=3600),
        "other-role": mint(SECRET, "v1", "recipient", ttl_s=3600),
        "other-org": mint(SECRET, "v1", "volunteer", org="elsewhere", ttl_s=3600),
        "bad-signature": mint("another-secret-0123456789abcdef0123", "v1", "volunteer"),
        "expired": mint(SECRET, "v1", "volunteer", ttl_s=10, now=now - 60),
        "garbage": "not-a-jwt",
    }


async def test_refused_refreshes_keep_the_session_until_its_token_expires() -> None:
    async with start_server(jwt_leeway_s=0, token_warning_s=0) as server:
        token = mint(SECRET, "v1", "volunteer", ttl_s=3)
        client = await connect_with(server, token)
        for name, bad in _bad_refresh_tokens().items():
            answer = await client.request({"type": "auth.refresh", "token": bad})
            assert answer["type"] == "error" and answer["code"] == "unauthenticated", name
            assert answer["message"], name
            assert (await client.request({"type": "ping"}))["type"] == "pong", name
        malformed = await client.request({"type": "auth.refresh"})
        assert malformed["type"] == "error" and malformed["code"] == "bad_message"
        assert "token" in malformed["message"]
        _, code = await closed_with(client, timeout=5)
        assert code == 4401


async def test_an_expired_session_may_resume_its_call_with_a_fresh_token() -> None:
    async with start_server(grace_s=10, **SHORT) as server:
        vol = await connect_with(server, mint(SECRET, "v1", "volunteer", ttl_s=2, **EN_LONDON))
        assert (await vol.request({"type": "availability", "available": True}))["available"]
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        await vol.request({"type": "call.accept", "call": call})
        await rec.expect("call.assigned")
        _, code = await closed_with(vol, timeout=4)
        assert code == 4401
        assert [m for m in await rec.quiet(0.5) if m["type"] == "call.ended"] == []
        back = await server.connect("v1", "volunteer", hello=False)
        welcome = await back.request(
            {"type": "hello", "token": server.token("v1"), "resume": vol.welcome["resume"]}
        )
        assert welcome["session"] == vol.welcome["session"]
        again = await back.expect("call.assigned")
        assert again["call"] == call and again["resumed"] is True


# --- revocation -------------------------------------------------------------------------------


async def test_revoking_ends_every_live_session_and_refuses_older_tokens() -> None:
    async with start_server(grace_s=20) as server:
        vol = await server.connect("v1", "volunteer", **EN_LONDON)
        assert (await vol.request({"type": "availability", "available": True}))["available"]
        tab = await server.connect("v1", "volunteer")
        other = await server.connect("v2", "volunteer")
        rec = await server.connect("r1", "recipient", **EN_LONDON)
        call = (await rec.request({"type": "call.request"}))["call"]
        await vol.expect("call.ring")
        await vol.request({"type": "call.accept", "call": call})
        await rec.expect("call.assigned")

        before = await server.ctx.hub.revoke(
            "v1", error_code="suspended", message="Banned.", extra={"until": None}
        )
        assert await server.ctx.store.revoked_before("v1") == before
        for client in (vol, tab):
            got, code = await closed_with(client)
            assert code == 4403
            assert got[-1] == {
                "type": "error",
                "code": "suspended",
                "message": "Banned.",
                "until": None,
            }
        # No resume for a revoked sign-in: the call ends now, not after the grace period.
        ended = await rec.expect("call.ended", timeout=3)
        assert ended["reason"] == "peer_lost" and ended["by"] == "volunteer"
        assert (await other.request({"type": "ping"}))["type"] == "pong"  # others unaffected

        old = mint(SECRET, "v1", "volunteer", ttl_s=3600, now=before - 5)
        answer, code = await refused_hello(server, old)
        assert answer["code"] == "unauthenticated" and "revoked" in answer["message"]
        assert code == 4401
        no_iat = jwt.encode({"sub": "v1", "role": "volunteer", "exp": time.time() + 60}, SECRET)
        answer, code = await refused_hello(server, no_iat)
        assert answer["code"] == "unauthenticated" and code == 4401
        resume = await server.connect("v1", "volunteer", hello=False)
        refused = await resume.request(
            {"type": "hello", "token": old, "resume": vol.welcome["resume"]}
        )
        assert refused["code"] == "unauthenticated"

        await until_next_second()
        again = await server.connect("v1", "volunteer")  # a sign-in after the revocation
        assert again.welcome["session"] != vol.welcome["session"]
        await again.close()


async def test_revoking_before_a_time_spares_later_sign_ins_and_refuses_older_refreshes() -> None:
    async with start_server() as server:
        client = await server.connect("v1", "volunteer")
        await server.ctx.hub.revoke("v1", before=time.time() - 60)
        assert (await client.request({"type": "ping"}))["type"] == "pong"  # issued after
        old = mint(SECRET, "v1", "volunteer", ttl_s=3600, now=time.time() - 120)
        answer = await client.request({"type": "auth.refresh", "token": old})
        assert answer["type"] == "error" and answer["code"] == "unauthenticated"
        assert "revoked" in answer["message"]
        assert (await client.request({"type": "ping"}))["type"] == "pong"
        # A revocation is never moved back by an earlier one.
        latest = await server.ctx.hub.revoke("v1", before=time.time() - 3600)
        assert latest > time.time() - 120
        await client.close()


async def test_end_sessions_without_revoking() -> None:
    async with start_server() as server:
        first = await server.connect("v1", "volunteer")
        second = await server.connect("v1", "volunteer")
        ended = await server.ctx.hub.end_sessions("v1", 4403, "forbidden", "Closed by an operator.")
        assert ended == 2
        for client in (first, second):
            got, code = await closed_with(client)
            assert code == 4403 and got[-1]["code"] == "forbidden"
        assert await server.ctx.store.revoked_before("v1") is None
        again = await server.connect("v1", "volunteer")  # the same token still signs in
        await again.close()


# --- the session cap --------------------------------------------------------------------------


async def test_opening_more_sessions_than_the_cap_closes_the_oldest() -> None:
    async with start_server(max_sessions_per_user=2) as server:
        first = await server.connect("v1", "volunteer")
        second = await server.connect("v1", "volunteer")
        assert (await first.request({"type": "ping"}))["type"] == "pong"
        third = await server.connect("v1", "volunteer")
        got, code = await closed_with(first)
        assert code == 4409
        assert got[-1]["type"] == "error" and got[-1]["code"] == "conflict"
        assert "more than 2 sessions" in got[-1]["message"]
        for client in (second, third):
            assert (await client.request({"type": "ping"}))["type"] == "pong"
        fourth = await server.connect("v1", "volunteer")
        _, code = await closed_with(second)
        assert code == 4409
        for client in (third, fourth):
            assert (await client.request({"type": "ping"}))["type"] == "pong"
        # Another user's sessions are theirs: the cap is per user.
        others = [await server.connect("v2", "volunteer") for _ in range(2)]
        assert (await third.request({"type": "ping"}))["type"] == "pong"
        for client in (third, fourth, *others):
            await client.close()


async def test_the_http_api_refuses_a_revoked_sign_in() -> None:
    async with start_server() as server:
        old = server.token("v1")
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {old}"}
            async with http.get(server.url + "/v1/me/profile", headers=headers) as resp:
                assert resp.status == 200
            await server.ctx.hub.revoke("v1")
            async with http.get(server.url + "/v1/me/profile", headers=headers) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert body["error"] == "unauthenticated" and "revoked" in body["message"]
            await until_next_second()
            fresh = {"Authorization": f"Bearer {server.token('v1')}"}
            async with http.get(server.url + "/v1/me/profile", headers=fresh) as resp:
                assert resp.status == 200
