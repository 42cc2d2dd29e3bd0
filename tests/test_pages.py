"""The pages the broker serves, and the demo sign-in that only demo mode offers."""

from __future__ import annotations

import json
from datetime import time
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clients import cli
from signaling.pages import web_root
from tests.helpers import SECRET, Client, Server, start_server


async def fetch(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, allow_redirects=False, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def test_pages_are_served_with_a_strict_policy(server: Server) -> None:
    status, headers, _ = await fetch(server.url + "/")
    assert status == 302 and headers["Location"] == "/app/"
    status, headers, body = await fetch(server.url + "/app/")
    assert status == 200 and "recipient.html" in body
    for name in ("recipient.html", "volunteer.html", "agent.html", "admin.html"):
        status, headers, body = await fetch(f"{server.url}/app/{name}")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert 'id="live"' in body and 'aria-live="polite"' in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"
    status, headers, body = await fetch(server.url + "/app/protocol.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert "export class Session" in body


async def test_nothing_outside_the_pages_is_served(server: Server) -> None:
    for path in ("/app/../signaling/app.py", "/app/%2e%2e/signaling/app.py", "/app/nope.html"):
        status, _, body = await fetch(server.url + path)
        assert status in (403, 404), (path, status)
        assert "create_app" not in body


def test_every_page_file_is_package_data() -> None:
    """An installed broker serves the same files: they match pyproject's package-data globs."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["*"]
    files = [p.name for p in web_root().iterdir() if p.is_file()]
    pages = {"index.html", "recipient.html", "volunteer.html", "agent.html", "admin.html"}
    assert pages | {"protocol.js", "admin.js", "charts.js"} <= set(files)
    assert [f for f in files if not any(fnmatch(f, g) for g in globs)] == []


async def test_demo_sign_in_is_refused_unless_demo_mode(server: Server) -> None:
    assert server.settings.demo is False
    status, _, body = await fetch(server.url + "/v1/demo/token", "POST", json={"role": "volunteer"})
    assert status == 404
    assert "vabroker serve --demo" in body and '"not_found"' in body


async def test_demo_sign_in_mints_tokens_for_demo_users() -> None:
    async with start_server(demo=True) as demo:
        status, _, body = await fetch(
            demo.url + "/v1/demo/token",
            "POST",
            json={"role": "volunteer", "name": "Dee", "languages": ["en", "fr"]},
        )
        assert status == 200, body
        answer = json.loads(body)
        claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        assert claims["role"] == "volunteer" and claims["name"] == "Dee"
        assert claims["sub"] == answer["user"]["id"] and claims["sub"].startswith("demo-")
        # The token signs in over the WebSocket, and the demo volunteer rings at any hour.
        client = Client(await websockets.connect(demo.ws_url, proxy=None), claims["sub"])
        welcome = await client.request({"type": "hello", "token": answer["token"]})
        assert welcome["type"] == "welcome" and welcome["user"]["display_name"] == "Dee"
        profile = await demo.ctx.store.get_profile(claims["sub"])
        assert profile is not None and profile.ring_window.contains(time(3, 0))
        await client.close()

        status, _, body = await fetch(demo.url + "/v1/demo/token", "POST", json={"role": "agent"})
        assert status == 200
        agent = jwt.decode(json.loads(body)["token"], SECRET, algorithms=["HS256"])
        assert agent["role"] == "agent" and agent["org"] == "demo-org"


async def test_demo_sign_in_needs_the_brokers_own_secret() -> None:
    """A broker that only verifies an identity provider's tokens cannot mint demo ones."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    async with start_server(
        demo=True, jwt_secret=None, jwt_public_key=public.decode(), jwt_algorithms=["ES256"]
    ) as demo:
        status, _, body = await fetch(
            demo.url + "/v1/demo/token", "POST", json={"role": "recipient"}
        )
        assert status == 403 and "VABROKER_JWT_SECRET" in body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"role": "superuser"}, "role"),
        ({"role": "recipient", "extra": 1}, "extra"),
        ({"role": "recipient", "languages": ["not a tag"]}, "languages"),
        ({"role": "recipient", "timezone": "Mars/Base"}, "timezone"),
        ({"role": "agent", "org": "../x"}, "org"),
        ({}, "role"),
        (["recipient"], "JSON object"),
    ],
)
async def test_demo_sign_in_rejects_bad_bodies(body: Any, fragment: str) -> None:
    async with start_server(demo=True) as demo:
        status, _, text = await fetch(demo.url + "/v1/demo/token", "POST", json=body)
        assert status == 400 and fragment in text, text
        status, _, text = await fetch(
            demo.url + "/v1/demo/token",
            "POST",
            data=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and "not valid JSON" in text


def test_serve_demo_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    async def fake_serve(settings: Any) -> None:
        seen.append(settings)

    monkeypatch.setenv("VABROKER_JWT_SECRET", SECRET)
    monkeypatch.setattr("signaling.server.serve", fake_serve)
    monkeypatch.setattr("signaling.logs.setup_logging", lambda *a: None)
    assert cli.main(["serve", "--demo", "--port", "0"]) == 0
    assert cli.main(["serve", "--port", "0"]) == 0
    assert [s.demo for s in seen] == [True, False]
