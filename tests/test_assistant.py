"""The automatic reader in a real call: the recipient's test video shows printed words, the
assistant reads them with Tesseract and speaks them (espeak-ng) into the call's audio, and sends
the same text over the call's tools channel."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from clients.assistant import (
    CANNOT_READ,
    Assistant,
    ReaderStats,
    Reading,
    VisionBackend,
    legible,
    parse_tsv,
    synthesize,
    word_accuracy,
)
from clients.sdk import Client, Conflict
from signaling.messages import CallEnded, CallStatus
from tests.calls import CALL_SETTINGS, LOOPBACK, recipient, until, volunteer
from tests.helpers import Server, start_server

LABEL = (
    "PARACETAMOL 500 mg TABLETS",
    "Take one or two tablets every",
    "four to six hours. Do not take",
    "more than eight tablets in 24 hours.",
)


async def assistant(server: Server, sub: str = "reader") -> Assistant:
    token = server.token(sub, "volunteer", name="Reader", languages=["en"])
    party = Assistant(Client(server.ws_url, token), LOOPBACK)
    await party.client.connect()
    await party.set_available(True)
    return party


async def test_assistant_reads_the_printed_words_aloud_and_as_text() -> None:
    async with start_server(**CALL_SETTINGS) as server:
        reader = await assistant(server)
        rec = await recipient(server, "r-reads")
        rec.media_options = replace(LOOPBACK, card=LABEL)
        try:
            await rec.request(topic="what does this label say")
            call = await rec.wait_call(10)
            await call.wait_connected(10)
            # The text arrives over the tools channel: the printed words, read from 640x480 video.
            await until(lambda: bool(call.tools.texts_received), 20, "the text read")
            text = call.tools.texts_received[0]
            printed = " ".join(LABEL).split()
            accuracy = word_accuracy(text.split(), printed)
            assert accuracy >= 0.95, f"read {accuracy:.0%} of the words: {text!r}"
            # The same words are spoken into the call: the recipient decodes loud audio (the
            # assistant sends silence except when it speaks).
            await until(lambda: call.media.stats.audio_peak > 2000, 10, "speech audio")
            assert reader.call is not None
            speech = reader.readers[reader.call.id].speech
            await until(lambda: speech.spoken_samples > 48_000, 10, "a second of speech")
            assert speech.first_sound_at is not None
            assert reader.readers[reader.call.id].stats.spoken[0] == text.replace("\n", ". ")
            await call.hang_up()
        finally:
            await rec.close()
            await reader.close()


async def test_assistant_says_when_it_cannot_read() -> None:
    async with start_server(**CALL_SETTINGS) as server:
        reader = await assistant(server, "reader-2")
        rec = await recipient(server, "r-blank")  # the plain test pattern: no print at all
        try:
            await rec.request()
            call = await rec.wait_call(10)
            await call.wait_connected(10)
            assert reader.call is not None
            stats = reader.readers[reader.call.id].stats
            await until(lambda: stats.cannot_read == 1, 20, "the cannot-read advice")
            assert stats.spoken == [CANNOT_READ["en"]]
            assert call.tools.texts_received == []
            await until(lambda: call.media.stats.audio_peak > 2000, 10, "the advice, spoken")
            await call.hang_up()
            await until(lambda: bool(reader.finished), 5, "the reader stopped")
            assert isinstance(reader.finished[0], ReaderStats)
        finally:
            await rec.close()
            await reader.close()


def test_parse_tsv_keeps_confident_words_in_reading_order() -> None:
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    rows = [
        "5\t1\t1\t1\t2\t1\t0\t0\t1\t1\t96\tworld",
        "5\t1\t1\t1\t1\t1\t0\t0\t1\t1\t91\thello",
        "5\t1\t1\t1\t1\t2\t0\t0\t1\t1\t12\tzq#",
        "5\t1\t1\t1\t1\t3\t0\t0\t1\t1\t95\t—",
        "4\t1\t1\t1\t1\t0\t0\t0\t1\t1\t-1\t",
    ]
    reading = parse_tsv("\n".join([header, *rows]))
    assert reading.text == "hello\nworld" and reading.words == ["hello", "world"]


def test_only_words_are_text_not_a_camera_s_clock_or_stray_shapes() -> None:
    def reading(*words: str) -> Reading:
        return Reading(" ".join(words), list(words), 90.0)

    # What Tesseract made of a browser's fake camera: its clock, its frame count, a shape.
    assert not legible(reading("0:00:11:300", "226.", "ill"))
    assert not legible(reading("156.", "4"))
    assert not legible(reading("Exit"))
    assert legible(reading("PARACETAMOL", "500", "mg"))
    assert legible(reading("08:15", "Leeds", "Platform", "4"))


def test_word_accuracy() -> None:
    assert word_accuracy(["Take", "one,"], ["take", "one"]) == 1.0
    assert word_accuracy(["take"], ["take", "one"]) == 0.5
    assert word_accuracy([], ["a"]) == 0.0


@pytest.mark.parametrize("language", ["en", "es", "ar"])
async def test_speech_in_the_calls_language(language: str) -> None:
    pcm = await synthesize({"en": "hello", "es": "hola", "ar": "مرحبا"}[language], language)
    assert pcm.dtype == np.int16 and len(pcm) > 48_000 // 10 and int(np.abs(pcm).max()) > 1000


class VisionStandIn:
    """A local stand-in for a vision-language model's HTTP API."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.answer: Any = {"text": "A white card with black print."}
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "Bearer k-123"
        self.asked.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status)
        if isinstance(self.answer, str):
            return web.Response(text=self.answer)
        return web.json_response(self.answer)


async def test_vision_backend_against_a_local_stand_in() -> None:
    stand_in = VisionStandIn()
    app = web.Application()
    app.router.add_post("/v1/vision", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        backend = VisionBackend(f"http://127.0.0.1:{port}/v1/vision", key="k-123")
        gray = np.full((48, 64), 200, dtype=np.uint8)
        assert await backend.describe(gray, "es") == "A white card with black print."
        asked = stand_in.asked[0]
        assert asked["language"] == "es" and asked["prompt"].startswith("Describe")
        assert base64.b64decode(asked["image"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert await backend.ask(gray, "What colour is it?", "en") == stand_in.answer["text"]
        for answer, problem in (("not json", "not JSON"), ({"words": 1}, "has no text")):
            stand_in.answer = answer
            with pytest.raises(RuntimeError, match=problem):
                await backend.describe(gray, "en")
        stand_in.status = 503
        with pytest.raises(RuntimeError, match="answered 503"):
            await backend.describe(gray, "en")
    finally:
        await runner.cleanup()


def test_vision_backend_needs_an_http_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        VisionBackend("ftp://127.0.0.1/x")


async def on_duty_assistant(server: Server, sub: str) -> Assistant:
    token = server.token(sub, "assistant", name="Reader", languages=["en"])
    party = Assistant(Client(server.ws_url, token), LOOPBACK)
    await party.client.connect()
    await party.set_available(True)
    return party


async def test_a_call_that_asks_for_the_assistant_rings_it_first_and_alone() -> None:
    async with start_server(first_wave=5, **CALL_SETTINGS) as server:
        reader = await on_duty_assistant(server, "reader-role")
        vols = [await volunteer(server, f"v-a{i}", auto_accept=False) for i in range(3)]
        rec = await recipient(server, "r-asks")
        rec.media_options = replace(LOOPBACK, card=LABEL)
        try:
            status = await rec.request(topic="a label", helper="assistant")
            assert status.notified == 1
            call = await rec.wait_call(10)
            assert call.peer_name == "Reader" and reader.call is not None
            assert all(not v.rings for v in vols), "volunteers were rung for an assistant call"
            await until(lambda: bool(call.tools.texts_received), 20, "the text read")
            await call.hang_up()
            # A call that does not ask for the assistant never rings it.
            await until(lambda: reader.call is None, 5, "the assistant free again")
            status = await rec.request(topic="anything")
            assert status.notified == 3
            await until(lambda: all(v.rings for v in vols), 5, "every volunteer rung")
            assert reader.rings == {}
            await rec.cancel(status.call)
        finally:
            await rec.close()
            await reader.close()
            for v in vols:
                await v.close()


async def test_without_a_free_assistant_the_volunteers_are_rung() -> None:
    async with start_server(first_wave=5, **CALL_SETTINGS) as server:
        vol = await volunteer(server, "v-fallback")
        rec = await recipient(server, "r-fallback")
        try:
            status = await rec.request(helper="assistant")
            assert status.notified == 1
            call = await rec.wait_call(10)
            assert call.peer_name == "v-fallback"
            await call.hang_up()
        finally:
            await rec.close()
            await vol.close()


async def test_only_known_helper_kinds_are_accepted() -> None:
    async with start_server(**CALL_SETTINGS) as server:
        rec = await server.connect("r-bad", "recipient", languages=["en"])
        try:
            answer = await rec.request({"type": "call.request", "helper": "robot"})
            assert answer["type"] == "error" and answer["code"] == "bad_message"
            assert "helper" in answer["message"]
        finally:
            await rec.close()


async def test_a_crashed_assistant_is_replaced_by_the_volunteer_search() -> None:
    async with start_server(grace_s=0.5, **CALL_SETTINGS) as server:
        token = server.token("reader-crash", "assistant", name="Reader", languages=["en"])
        reader = Assistant(Client(server.ws_url, token, reconnect=False), LOOPBACK)
        await reader.client.connect()
        await reader.set_available(True)
        rec = await recipient(server, "r-crash")
        vol = None
        try:
            await rec.request(topic="my post", helper="assistant")
            first = await rec.wait_call(10)
            assert first.peer_name == "Reader"
            await first.wait_connected(10)
            vol = await volunteer(server, "v-after-crash", auto_accept=False)
            await reader.client.drop()  # the assistant's process dies: no resume
            ended = await rec.next_event(CallEnded, 10, call=first.id)
            assert ended.reason == "peer_lost"
            # Without asking again, the recipient hears of a new search...
            status = await rec.next_event(CallStatus, 5)
            assert status.call != first.id and status.state == "searching"
            assert status.notified == 1
            # ...and the volunteer is rung for it with the topic.
            await until(lambda: bool(vol and vol.rings), 5, "the volunteer's ring")
            ring = vol.rings[status.call]
            assert ring.topic == "my post"
            await vol.accept(status.call)
            second = await rec.wait_call(10)
            assert second.id == status.call and second.peer_name == "v-after-crash"
            await second.wait_connected(10)
            await second.hang_up()
        finally:
            await rec.close()
            await reader.close()
            if vol is not None:
                await vol.close()


async def test_get_me_a_volunteer_hands_the_call_over_mid_call() -> None:
    """The reader stays on while the volunteers are rung; the first to accept takes the call
    over, with the topic and (shared by the recipient) what the reader read."""
    async with start_server(first_wave=5, **CALL_SETTINGS) as server:
        reader = await on_duty_assistant(server, "reader-handover")
        rec = await recipient(server, "r-handover")
        rec.media_options = replace(LOOPBACK, card=LABEL)
        vol = await volunteer(server, "v-handover", auto_accept=False)
        try:
            await rec.request(topic="a label", helper="assistant")
            first = await rec.wait_call(10)
            assert first.peer_name == "Reader"
            await first.wait_connected(10)
            await until(lambda: bool(first.tools.texts_received), 20, "the text read")
            assert not vol.rings
            status = await rec.hand_over(share_reading=True)
            assert status.state == "searching" and status.replaces == first.id
            assert status.call != first.id and status.notified == 1
            # The reader's call goes on while the volunteer is rung.
            await until(lambda: bool(vol.rings), 5, "the volunteer's ring")
            ring = vol.rings[status.call]
            assert ring.topic == "a label"
            assert ring.reading is not None and "PARACETAMOL" in ring.reading
            assert rec.call is first and not first.ended.done()
            second = await vol.accept(status.call)
            assert second.assigned.reading == ring.reading
            ended = await rec.next_event(CallEnded, 10, call=first.id)
            assert (ended.reason, ended.by) == ("handed_over", "recipient")
            mine = await rec.wait_call(10)
            assert mine.id == status.call and mine.peer_name == "v-handover"
            await mine.wait_connected(10)
            await second.wait_connected(10)
            await until(lambda: reader.call is None, 5, "the reader free again")
            await mine.hang_up()
        finally:
            await rec.close()
            await reader.close()
            await vol.close()


async def test_a_handover_search_cancelled_keeps_the_reader() -> None:
    async with start_server(first_wave=5, **CALL_SETTINGS) as server:
        reader = await on_duty_assistant(server, "reader-stays")
        rec = await recipient(server, "r-stays")
        vol = await volunteer(server, "v-stays", auto_accept=False)
        try:
            await rec.request(topic="a form", helper="assistant")
            first = await rec.wait_call(10)
            await first.wait_connected(10)
            status = await rec.hand_over()  # nothing shared
            await until(lambda: bool(vol.rings), 5, "the volunteer's ring")
            assert vol.rings[status.call].reading is None
            with pytest.raises(Conflict, match="already being looked for"):
                await rec.client.request({"type": "call.handover", "call": first.id})
            ended = await rec.cancel(status.call)
            assert ended.call == status.call and ended.reason == "cancelled"
            await until(lambda: not vol.rings, 5, "the ring withdrawn")
            assert rec.call is first and not first.ended.done() and reader.call is not None
            await first.hang_up()
        finally:
            await rec.close()
            await reader.close()
            await vol.close()
