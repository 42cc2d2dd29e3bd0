"""Sign-in through an OpenID Connect provider's key set (JWKS), against a local provider that
rotates its keys: issuer and audience are checked, a new ``kid`` is fetched, an unknown ``kid``
does not hammer the provider, a withdrawn key stops working, and fetching never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from signaling.auth import KeySet, parse_jwks
from signaling.config import ConfigError, load_settings
from tests.helpers import start_server

ISSUER = "https://id.example.org/"
AUDIENCE = "vabroker-test"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, sub: str = "v1", role: str = "volunteer", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "sub": sub,
            "role": role,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Provider:
    """A local identity provider's JWKS endpoint: publishes ``keys``, counts requests, and can
    be made slow."""

    keys: list[SigningKey]
    url: str = ""
    hits: int = 0
    delay_s: float = 0.0
    answered: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.answered.append(time.monotonic())
        return web.json_response({"keys": [k.jwk() for k in self.keys]})


@contextlib.asynccontextmanager
async def provider(keys: list[SigningKey]) -> AsyncIterator[Provider]:
    p = Provider(keys)
    app = web.Application()
    app.router.add_get("/jwks", p.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    p.url = f"http://{host}:{port}/jwks"
    try:
        yield p
    finally:
        await runner.cleanup()


def oidc_settings(p: Provider) -> dict[str, Any]:
    return {
        "jwt_jwks_url": p.url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_algorithms": ["RS256", "ES256"],
        "jwt_jwks_refetch_s": 1.0,
    }


async def profile_status(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    async with http.get(
        url + "/v1/me/profile", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        body = await response.json()
        return response.status, str(body.get("message", ""))


async def test_provider_keys_rotate_and_unknown_kids_do_not_hammer_it() -> None:
    first, second, stranger = rsa_key("k1"), ec_key("k2"), rsa_key("k-unknown")
    bogus = [stranger.token() if i % 2 else ec_key(f"bogus-{i}").token() for i in range(50)]
    async with provider([first]) as p, start_server(**oidc_settings(p)) as server:
        async with aiohttp.ClientSession() as http:
            assert await profile_status(http, server.url, first.token()) == (200, "")
            assert p.hits == 1

            # Issuer and audience are checked: right key, wrong claims.
            status, why = await profile_status(http, server.url, first.token(aud="other-app"))
            assert status == 401 and "audience" in why.lower()
            status, why = await profile_status(
                http, server.url, first.token(iss="https://evil.example/")
            )
            assert status == 401 and "issuer" in why.lower()
            # A token signed with the shared-secret algorithm is refused (none is configured).
            hs = jwt.encode({"sub": "v1", "role": "volunteer", "exp": 2**31}, "x" * 32, "HS256")
            assert (await profile_status(http, server.url, hs))[0] == 401

            # Fifty tokens naming keys the provider never published, at once: all refused, and
            # the provider asked at most once for all of them (at most one fetch per interval).
            before = p.hits
            results = await asyncio.gather(
                *(profile_status(http, server.url, token) for token in bogus)
            )
            assert all(status == 401 for status, _ in results)
            assert "not one of the identity provider's keys" in results[0][1]
            assert p.hits - before <= 1

            # The provider rotates: k1 withdrawn, k2 (ES256) published. Once the refetch
            # interval has passed, the first token with k2 fetches the set again: twenty at
            # once share one fetch.
            p.keys = [second]
            await asyncio.sleep(1.1)
            before = p.hits
            results = await asyncio.gather(
                *(profile_status(http, server.url, second.token(sub=f"u{i}")) for i in range(20))
            )
            assert results == [(200, "")] * 20
            assert p.hits == before + 1
            # The withdrawn key no longer signs anyone in.
            status, why = await profile_status(http, server.url, first.token())
            assert status == 401 and "k1" in why

            # Unknown kids after the interval: one fetch per interval, not one per token.
            await asyncio.sleep(1.1)
            before = p.hits
            for _ in range(10):
                assert (await profile_status(http, server.url, stranger.token()))[0] == 401
            assert p.hits == before + 1  # ten tokens well within one interval

            # Over the WebSocket too.
            ws = await http.ws_connect(server.ws_url)
            await ws.send_json({"type": "hello", "token": second.token(sub="w1")})
            welcome = await ws.receive_json(timeout=5)
            assert welcome["type"] == "welcome", welcome
            await ws.close()


async def test_a_slow_provider_does_not_block_other_requests() -> None:
    first, second = rsa_key("k1"), rsa_key("k2")
    async with provider([first, second]) as p, start_server(**oidc_settings(p)) as server:
        p.delay_s = 1.0
        async with aiohttp.ClientSession() as http:
            signing_in = asyncio.ensure_future(profile_status(http, server.url, first.token()))
            await asyncio.sleep(0.2)  # the fetch is under way
            async with http.get(server.url + "/healthz") as response:
                assert response.status == 200
            healthy_at = time.monotonic()
            assert not signing_in.done()
            assert await signing_in == (200, "")
            assert p.answered[0] > healthy_at  # health was answered while keys were on the way
            assert p.hits == 1


async def test_provider_down_refuses_with_a_clear_message() -> None:
    first = rsa_key("k1")
    async with provider([first]) as p:
        settings = oidc_settings(p)
    # The provider has stopped: nothing listens on its port any more.
    async with start_server(**settings) as server, aiohttp.ClientSession() as http:
        status, why = await profile_status(http, server.url, first.token())
        assert status == 401 and "k1" in why


def test_jwks_documents_are_parsed_strictly() -> None:
    good = rsa_key("a").jwk()
    assert set(parse_jwks({"keys": [good, {"kty": "RSA"}, {**good, "kid": "enc", "use": "enc"}]}))
    assert set(parse_jwks({"keys": [good]})) == {"a"}
    for bad in ({}, {"keys": "x"}, [], {"keys": []}, {"keys": [{"kid": "b", "kty": "nope"}]}):
        with pytest.raises(ValueError):
            parse_jwks(bad)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"jwt_jwks_url": "http://id.example.org/jwks"}, "https"),
        ({"jwt_jwks_url": "ftp://id.example.org/jwks"}, "scheme must be https"),
        ({"jwt_jwks_url": "jwks.json"}, "absolute URL"),
        ({"jwt_issuer": None}, "jwt_issuer"),
        ({"jwt_audience": None}, "jwt_audience"),
        ({"jwt_algorithms": ["HS256"], "jwt_secret": "s" * 32}, "only HS256"),
        ({"jwt_jwks_refetch_s": 0.1}, "jwt_jwks_refetch_s"),
        ({"jwt_jwks_refetch_s": 7200, "jwt_jwks_max_age_s": 3600}, "jwt_jwks_max_age_s"),
    ],
)
def test_bad_identity_provider_settings_are_refused(overrides: dict[str, Any], needle: str) -> None:
    values: dict[str, Any] = {
        "jwt_jwks_url": "https://id.example.org/.well-known/jwks.json",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_algorithms": ["RS256"],
    }
    values.update(overrides)
    with pytest.raises(ConfigError) as err:
        load_settings(**values)
    assert needle in str(err.value)


def test_good_identity_provider_settings() -> None:
    s = load_settings(
        jwt_jwks_url="https://id.example.org/.well-known/jwks.json",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_algorithms=["RS256"],
    )
    assert s.jwt_jwks_url and s.jwt_jwks_refetch_s == 60


async def test_the_key_set_is_refetched_when_stale_and_not_more_often_than_allowed() -> None:
    first, second = rsa_key("k1"), rsa_key("k2")
    now = [1000.0]
    async with provider([first]) as p:
        keys = KeySet(p.url, refetch_s=60, max_age_s=600, clock=lambda: now[0])
        try:
            await keys.ensure("k1")
            assert p.hits == 1 and keys.key("k1") is not None
            now[0] += 59
            await keys.ensure("k2")  # unknown, but the last fetch was 59 s ago
            assert p.hits == 1 and keys.key("k2") is None
            now[0] += 1
            p.keys = [second]
            await keys.ensure("k2")  # unknown, and 60 s have passed
            assert p.hits == 2 and keys.key("k2") is not None and keys.key("k1") is None
            await keys.ensure("k2")  # known and fresh: no fetch
            assert p.hits == 2
            now[0] += 600
            p.keys = [first]
            await keys.ensure("k2")  # known but stale: fetched again; k2 was withdrawn
            assert p.hits == 3 and keys.key("k2") is None and keys.key("k1") is not None
            # A broken answer leaves the keys as they were.
            p.keys = []
            now[0] += 600
            await keys.ensure("k1")
            assert p.hits == 4 and keys.key("k1") is not None
        finally:
            await keys.close()


async def test_a_token_without_a_kid_is_refused_clearly() -> None:
    first = rsa_key("k1")
    async with provider([first]) as p, start_server(**oidc_settings(p)) as server:
        now = int(time.time())
        token = jwt.encode(
            {"sub": "v1", "role": "volunteer", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60},
            first.private,
            algorithm="RS256",
        )
        async with aiohttp.ClientSession() as http:
            status, why = await profile_status(http, server.url, token)
        assert status == 401 and "kid" in why
