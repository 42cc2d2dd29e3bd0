"""In-call tools between two aiortc peers through a real broker: torch, camera, zoom and a
photo at the source's native resolution over the call's data channel."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clients.calltools import (
    CHUNK_BYTES,
    MAX_PHOTO_BYTES,
    BadToolMessage,
    CallTools,
    Device,
    Photo,
    ToolFailed,
    image_size,
    parse_message,
)
from clients.roles import Call, Recipient, Volunteer
from tests.calls import CALL_SETTINGS, LOOPBACK, recipient, until, volunteer
from tests.helpers import Server, start_server


class TorchPhone(Device):
    """A device with a torch and two cameras, as a phone app would provide."""

    def __init__(self) -> None:
        self.lit = False
        self.facing = "environment"

    async def torch(self, on: bool) -> dict[str, Any]:
        self.lit = on
        return {"torch": on}

    async def switch_camera(self) -> dict[str, Any]:
        self.facing = "user" if self.facing == "environment" else "environment"
        return {"facing": self.facing}


Pair = tuple[Recipient, Call, Volunteer, Call]


async def connected_pair(server: Server, photo_size: tuple[int, int] | None) -> Pair:
    vol = await volunteer(server, "v-tools")
    rec = await recipient(server, "r-tools")
    rec.media_options = replace(LOOPBACK, photo_size=photo_size)
    await rec.request(topic="reading small print")
    call = await rec.wait_call(10)
    await until(lambda: vol.call is not None, 5, "the volunteer's call")
    assert vol.call is not None
    vcall = vol.call
    await call.wait_connected(10)
    await vcall.wait_connected(10)
    await vcall.tools.wait_open(5)
    await call.tools.wait_open(5)
    return rec, call, vol, vcall


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with start_server(**CALL_SETTINGS) as server:
        rec, call, vol, vcall = await connected_pair(server, (1920, 1080))
        try:
            yield rec, call, vol, vcall
        finally:
            await rec.close()
            await vol.close()


async def test_photo_arrives_byte_exact_at_the_sources_full_resolution(
    pair: Pair, tmp_path: Path
) -> None:
    rec, call, _vol, vcall = pair
    await until(lambda: vcall.media.stats.video_frames >= 5, 5, "video frames")
    photo = await vcall.tools.photo()
    sent = call.tools.photos_sent[-1]
    assert photo.data == sent.data and photo.sha256 == hashlib.sha256(sent.data).hexdigest()
    assert len(photo.data) > 2 * CHUNK_BYTES, "the photo crossed in several chunks"
    # Decoded from the bytes that arrived, not from what the sender said: full resolution,
    # while the call's video runs at 640x480.
    assert image_size(photo.data) == (1920, 1080) == (photo.width, photo.height)
    assert vcall.media.stats.video_size == (640, 480)
    saved = photo.save(tmp_path / "label")
    assert saved.suffix == ".jpg" and saved.read_bytes() == photo.data
    await until(lambda: "Photo sent." in rec.tool_notices, 5, "the recipient hears it")


async def test_each_tool_answers_and_the_recipient_hears_it(pair: Pair) -> None:
    rec, call, _vol, vcall = pair
    # The test pattern has no torch and one camera: said plainly, not a silent failure.
    with pytest.raises(ToolFailed) as torch:
        await vcall.tools.torch(True)
    assert torch.value.code == "unsupported" and "no torch" in torch.value.message
    with pytest.raises(ToolFailed) as camera:
        await vcall.tools.switch_camera()
    assert camera.value.code == "unsupported"
    # Zoom works on the pattern: the picture the helper decodes changes.
    answer = await vcall.tools.zoom(2.5)
    assert answer.state == {"zoom": 2.5, "min": 1.0, "max": 5.0}
    assert call.media.pattern is not None and call.media.pattern.zoom == 2.5
    clamped = await vcall.tools.zoom(9)
    assert clamped.state["zoom"] == 5.0
    # A device with a torch and two cameras answers with its new state.
    phone = TorchPhone()
    call.tools.device = phone
    assert (await vcall.tools.torch(True)).state == {"torch": True} and phone.lit
    assert (await vcall.tools.switch_camera()).state == {"facing": "user"}
    assert (await vcall.tools.torch(False)).state == {"torch": False} and not phone.lit
    await until(lambda: len(rec.tool_notices) == 7, 5, "seven notices")
    assert rec.tool_notices == [
        "The helper asked for your torch, but your device does not support it. "
        "This camera has no torch.",
        "The helper asked for your other camera, but your device does not support it. "
        "This device has only one camera.",
        "The helper zoomed your camera to 2.5 times.",
        "The helper zoomed your camera to 5 times.",
        "The helper turned on your torch.",
        "The helper switched to your other camera.",
        "The helper turned off your torch.",
    ]


async def test_recipient_who_refuses_photos_sends_none(pair: Pair) -> None:
    rec, call, _vol, vcall = pair
    call.tools.allow_photos = False
    with pytest.raises(ToolFailed) as refused:
        await vcall.tools.photo()
    assert refused.value.code == "refused"
    assert call.tools.photos_sent == [] and vcall.tools.photos_received == []
    await until(lambda: bool(rec.tool_notices), 5, "the recipient hears it")
    assert "Photos are off in your settings" in rec.tool_notices[-1]


async def test_photo_over_the_limit_is_not_sent(pair: Pair) -> None:
    rec, call, _vol, vcall = pair
    with pytest.raises(ToolFailed) as large:
        await vcall.tools.photo(max_bytes=10_000)
    assert large.value.code == "too_large" and "over the limit of 10000" in large.value.message
    assert call.tools.photos_sent == []
    await until(lambda: bool(rec.tool_notices), 5, "the recipient hears it")
    assert "too large" in rec.tool_notices[-1]
    # The recipient's own limit holds whatever the helper asks for.
    call.tools.photo_limit = 20_000
    with pytest.raises(ToolFailed) as own:
        await vcall.tools.photo(max_bytes=MAX_PHOTO_BYTES)
    assert own.value.code == "too_large"


async def test_damaged_or_malformed_messages_are_refused(pair: Pair) -> None:
    _rec, call, _vol, vcall = pair
    channel = vcall.media.tools_channel
    # A bad request gets a bad_request answer naming the problem; the channel carries on.
    channel.send(json.dumps({"type": "tool.request", "id": "x1", "tool": "laser"}))
    channel.send(json.dumps({"type": "tool.request", "id": "x2", "tool": "zoom", "level": 99}))
    channel.send("not json")
    await until(lambda: len(call.tools.refused_messages) == 3, 5, "three refusals")
    assert call.tools.refused_messages == [
        "tool must be one of torch, camera, zoom, photo",
        "zoom needs a level from 1 to 10",
        "a tools message must be JSON",
    ]
    assert (await vcall.tools.zoom(2)).state["zoom"] == 2
    # A photo whose bytes do not match its SHA-256 is rejected by the helper.
    future = vcall.tools._photos["p-test"] = asyncio.get_running_loop().create_future()
    call.tools._send(
        {
            "type": "photo.begin",
            "id": "p-test",
            "mime": "image/jpeg",
            "size": 4,
            "width": 2,
            "height": 2,
            "sha256": "0" * 64,
        }
    )
    call.media.tools_channel.send(b"\xff\xd8\xff\xd9")
    with pytest.raises(ToolFailed) as damaged:
        await asyncio.wait_for(future, 5)
    assert damaged.value.code == "failed" and "damaged" in damaged.value.message


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"type": "tool.request", "tool": "torch", "on": True}, "id must be"),
        ({"type": "tool.request", "id": "a", "tool": "torch", "on": "yes"}, "torch needs on"),
        ({"type": "tool.request", "id": "a", "tool": "zoom", "level": float("nan")}, "zoom needs"),
        ({"type": "tool.request", "id": "a", "tool": "photo", "max_bytes": 0}, "max_bytes"),
        ({"type": "tool.request", "id": "a", "tool": "photo", "max_bytes": True}, "max_bytes"),
        ({"type": "tool.result", "id": "a", "tool": "torch", "ok": "yes"}, "ok must be"),
        (
            {
                "type": "tool.result",
                "id": "a",
                "tool": "torch",
                "ok": False,
                "error": "x",
                "message": "m",
            },
            "error must be",
        ),
        (
            {
                "type": "photo.begin",
                "id": "a",
                "mime": "image/gif",
                "size": 1,
                "width": 1,
                "height": 1,
                "sha256": "0" * 64,
            },
            "mime must be",
        ),
        (
            {
                "type": "photo.begin",
                "id": "a",
                "mime": "image/png",
                "size": MAX_PHOTO_BYTES + 1,
                "width": 1,
                "height": 1,
                "sha256": "0" * 64,
            },
            "size must be",
        ),
        (
            {
                "type": "photo.begin",
                "id": "a",
                "mime": "image/png",
                "size": 1,
                "width": 1,
                "height": 1,
                "sha256": "ABC",
            },
            "sha256 must be",
        ),
        ({"type": "tool.hello", "id": "a"}, "unknown tools message type"),
        ([], "must be an object"),
    ],
)
def test_parse_refuses_each_bad_field(message: Any, problem: str) -> None:
    with pytest.raises(BadToolMessage, match=problem):
        parse_message(json.dumps(message))


def test_parse_refuses_an_oversized_message() -> None:
    with pytest.raises(BadToolMessage, match="at most 16384 bytes"):
        parse_message(json.dumps({"type": "tool.request", "id": "a", "pad": "x" * 17000}))


def test_photo_save_names_the_type(tmp_path: Path) -> None:
    photo = Photo(b"\x89PNG", "image/png", 1, 1, hashlib.sha256(b"\x89PNG").hexdigest())
    assert photo.save(tmp_path / "p").name == "p.png"


async def test_tools_fail_cleanly_when_the_call_ends(pair: Pair) -> None:
    _rec, call, _vol, vcall = pair
    await call.hang_up()
    await until(lambda: vcall.media.closed, 5, "the helper's media closed")
    with pytest.raises(ToolFailed):
        await vcall.tools.zoom(2)
    assert isinstance(vcall.tools, CallTools)
