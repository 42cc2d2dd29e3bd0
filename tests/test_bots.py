"""The command-line bots as a person runs them (subprocesses), and media from a file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from rich.console import Console

from clients.bots import run_call
from clients.cli import main
from clients.media import MediaOptions, stamp
from clients.roles import Recipient, Volunteer
from clients.sdk import Client, ProtocolError
from signaling.messages import CallEnded
from tests.calls import CALL_SETTINGS, LOOPBACK, recipient, until, volunteer
from tests.helpers import start_server

VABROKER = [sys.executable, "-m", "clients.cli"]


async def _run(*args: str, out: Path, timeout_s: float = 60.0) -> tuple[int, str]:
    with out.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            *VABROKER, *args, stdout=log, stderr=asyncio.subprocess.STDOUT, env=_env()
        )
        try:
            code = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    return code, out.read_text()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env["COLUMNS"] = "200"
    return env


async def test_volunteer_and_call_commands_make_a_call(tmp_path: Path) -> None:
    async with start_server(**CALL_SETTINGS) as server:
        vol_token = server.token("v1", "volunteer", name="Val")
        rec_token = server.token("r1", "recipient", name="Rae", languages=["en"])
        common = ["--url", server.url, "--loopback"]

        # A time zone the broker does not know is refused, naming the field.
        code, text = await _run(
            "volunteer", *common, "--token", vol_token, "--lang", "en", "--tz", "Mars/Base",
            "--auto-accept", out=tmp_path / "bad.log",
        )  # fmt: skip
        assert code == 1 and "timezone" in text, text

        vol_log = tmp_path / "volunteer.log"
        with vol_log.open("w") as log:
            vol = await asyncio.create_subprocess_exec(
                *VABROKER, "volunteer", *common, "--token", vol_token, "--lang", "en",
                "--tz", "Europe/London", "--auto-accept",
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=_env(),
            )  # fmt: skip
        try:
            await until(lambda: "on duty" in vol_log.read_text(), 30, "the volunteer on duty")
            profile = await server.ctx.store.get_profile("v1")
            assert profile is not None and profile.timezone == "Europe/London"
            code, text = await _run(
                "call", *common, "--token", rec_token, "--lang", "en", "--duration", "1.5",
                "--json", out=tmp_path / "call.log",
            )  # fmt: skip
            assert code == 0, text
            report = json.loads(text[text.index("{") :])
            assert report["outcome"] == "completed" and report["peer"] == "Val"
            assert report["notified"] == 1 and report["waves"] == 1
            assert report["media"]["video_frames_sent"] >= 20
            assert report["media"]["audio_frames_received"] >= 20
            await until(lambda: "call ended: completed" in vol_log.read_text(), 10, "the end")
            assert "media connected" in vol_log.read_text()
        finally:
            vol.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(vol.wait(), 20) == 130
        # Off duty again after Ctrl-C.
        assert not await server.ctx.store.is_connected("v1")


async def test_demo_command_shows_a_whole_call(tmp_path: Path) -> None:
    code, text = await _run(
        "demo", "--volunteers", "3", "--duration", "1", out=tmp_path / "demo.log"
    )
    assert code == 0, text
    assert text.count("ring from Rae") == 3
    assert "media connected" in text and "whole call done" in text
    assert "damaged frames" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "--url", "http://127.0.0.1:9"], "--token"),
        (["call", "--url", "127.0.0.1:9", "--token", "t"], "--url"),
        (["call", "--token", "t", "--video", "/nonexistent.mp4"], "does not exist"),
        (["call", "--token", "t", "--duration", "0"], "--duration"),
        (["demo", "--volunteers", "0"], "--volunteers"),
        (["demo", "--duration", "-1"], "--duration"),
    ],
)
def test_bad_bot_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bad_circle_for_the_call_bot_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["call", "--token", "t", "--circle", "everyone"])
    assert exited.value.code == 2
    assert "--circle: invalid choice: 'everyone'" in capsys.readouterr().err


def test_unreachable_broker_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["call", "--url", "http://127.0.0.1:9", "--token", "t", "--connect-timeout", "2"])
    assert code == 1
    assert "Cannot connect" in capsys.readouterr().err


def _write_video(path: Path, frames: int = 45) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.bit_rate = 4_000_000
        chroma = np.full((240, 640), 128, dtype=np.uint8)
        for n in range(frames):
            luma = np.full((480, 640), 100, dtype=np.uint8)
            stamp(luma, n)
            frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, 30)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def test_video_from_a_file_reaches_the_volunteer(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    _write_video(video)
    async with start_server(**CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1")
        token = server.token("r1", "recipient", name="Rae", languages=["en"])
        options = MediaOptions(video=str(video), loopback_ice=True)
        rec = Recipient(Client(server.ws_url, token), options)
        await rec.client.connect()
        try:
            await rec.request()
            call = await rec.wait_call(10)
            await call.wait_connected(10)
            vcall = vol.call
            assert vcall is not None
            stats = vcall.media.stats
            await until(lambda: len(stats.stamps) >= 20, 10, "frames of the file")
            # The file's own frames, numbered when it was written, in order within one loop.
            assert all(0 <= n < 45 for n in stats.stamps)
            assert stats.stamps[:5] == sorted(stats.stamps[:5])
            await call.hang_up()
        finally:
            await rec.close()
            await vol.close()


async def test_volunteer_records_the_call(tmp_path: Path) -> None:
    recording = tmp_path / "call.mp4"
    async with start_server(**CALL_SETTINGS) as server:
        token = server.token("v1", "volunteer", name="Val", languages=["en"])
        options = MediaOptions(loopback_ice=True, record=str(recording))
        vol = Volunteer(Client(server.ws_url, token), options, auto_accept=True)
        await vol.client.connect()
        await vol.set_available(True)
        rec = await recipient(server)
        try:
            await rec.request()
            call = await rec.wait_call(10)
            await call.wait_connected(10)
            await asyncio.sleep(1.0)  # a second of media to record
            await call.hang_up()
            await vol.next_event(CallEnded, 5, call=call.id)
            await vol.wait_media_closed()
        finally:
            await rec.close()
            await vol.close()
    with av.open(str(recording)) as container:
        kinds = {s.type for s in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"video", "audio"}
    assert frames >= 10


async def test_volunteer_command_asks_before_accepting(tmp_path: Path) -> None:
    async with start_server(**CALL_SETTINGS) as server:
        token = server.token("v1", "volunteer", name="Val")
        log_path = tmp_path / "volunteer.log"
        with log_path.open("w") as log:
            vol = await asyncio.create_subprocess_exec(
                *VABROKER, "volunteer", "--url", server.url, "--token", token, "--loopback",
                "--lang", "en", "--tz", "Europe/London",
                stdin=asyncio.subprocess.PIPE, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=_env(),
            )  # fmt: skip
        rec = await recipient(server)
        try:
            await until(lambda: "on duty" in log_path.read_text(), 30, "the volunteer on duty")
            status = await rec.request()
            await until(lambda: "Accept?" in log_path.read_text(), 10, "the question")
            assert vol.stdin is not None
            vol.stdin.write(b"y\n")
            await vol.stdin.drain()
            call = await rec.wait_call(10)
            assert call.id == status.call and call.peer_name == "Val"
            await call.wait_connected(10)
            await call.hang_up()
            await until(lambda: "call ended: completed" in log_path.read_text(), 10, "the end")
        finally:
            await rec.close()
            vol.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(vol.wait(), 20) == 130


async def test_call_progress_counts_waves_and_notified(tmp_path: Path) -> None:
    settings = {**CALL_SETTINGS, "first_wave": 1, "wave_interval_s": 0.3}
    async with start_server(**settings) as server:
        shy = await volunteer(server, "v1", auto_accept=False)
        rec = await recipient(server)
        out = io.StringIO()
        console = Console(file=out, width=200)
        eager = None
        try:
            task = asyncio.create_task(run_call(rec, console, duration_s=0.5, wait_s=20))
            await until(lambda: bool(shy.rings), 5, "the first wave")
            eager = await volunteer(server, "v2")  # on duty in time for the second wave
            report = await asyncio.wait_for(task, 20)
            assert report.outcome == "completed" and report.peer == "v2"
            assert report.notified == 2 and report.waves == 2
            assert "(notified 2, 2 waves)" in out.getvalue()
        finally:
            await rec.close()
            await shy.close()
            if eager is not None:
                await eager.close()


async def test_call_report_says_nobody_answered_and_when_to_retry() -> None:
    settings = {**CALL_SETTINGS, "max_wait_s": 0.6, "escalate_retry_after_s": 300}
    async with start_server(**settings) as server:
        rec = await recipient(server)
        out = io.StringIO()
        try:
            report = await asyncio.wait_for(
                run_call(rec, Console(file=out, width=200), duration_s=0.5, wait_s=20), 20
            )
        finally:
            await rec.close()
        assert (report.outcome, report.escalation, report.retry_after_s) == (
            "no_answer",
            "unavailable",
            300,
        )
        assert "no volunteer free and no help centre (unavailable); try again in 300 s" in (
            out.getvalue()
        )
        assert "nobody answered: try again in 300 s" in out.getvalue()


async def test_call_bot_asks_the_circle_and_the_volunteer_bot_says_so() -> None:
    settings = {**CALL_SETTINGS, "max_wait_s": 0.8}
    async with start_server(**settings) as server:
        shy = await volunteer(server, "v1", auto_accept=False)
        await server.ctx.store.circle_add("rec", "v1", 0.0)
        rec = await recipient(server)
        out = io.StringIO()
        try:
            report = await asyncio.wait_for(
                run_call(rec, Console(file=out, width=200), circle="only", wait_s=20), 20
            )
            assert "rec" not in str(shy.rings)  # the ring names nobody's id
            assert [r.circle for r in shy.rings.values()] in ([True], [])
        finally:
            await rec.close()
            await shy.close()
        assert report.outcome == "no_answer" and report.notified == 1


async def test_a_lobby_bot_takes_a_waiting_request_and_watches_again_after() -> None:
    settings = {**CALL_SETTINGS, "wave_interval_s": 300.0, "lobby_interval_s": 0.2}
    async with start_server(**settings) as server:
        shy = await volunteer(server, "v1", auto_accept=False)  # rung, never answers
        rec = await recipient(server)
        taker: Volunteer | None = None
        try:
            status = await rec.request()
            await until(lambda: bool(shy.rings), 5, "the ring")
            token = server.token("v2", "volunteer", name="Lou", languages=["en"])
            taker = Volunteer(Client(server.ws_url, token), LOOPBACK, take_after_s=0.3)
            await taker.client.connect()
            await taker.set_available(True)
            await taker.open_lobby()
            call = await rec.wait_call(10)
            assert call.id == status.call and call.peer_name == "Lou" and taker.taken == 1
            await until(lambda: not shy.rings, 5, "the ring withdrawn")
            await call.hang_up()
            await until(lambda: taker is not None and taker.lobby_open, 5, "the lobby again")
        finally:
            await rec.close()
            await shy.close()
            if taker is not None:
                await taker.close()


async def test_the_lobby_refuses_a_volunteer_off_duty_through_the_sdk() -> None:
    async with start_server(**CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1", auto_accept=False)
        try:
            await vol.set_available(False)
            with pytest.raises(ProtocolError) as err:
                await vol.open_lobby()
            assert err.value.code == "conflict" and not vol.lobby_open
        finally:
            await vol.close()


@pytest.mark.parametrize("bad", ["soon", "-1", "nan", "4000"])
async def test_take_after_must_be_seconds(tmp_path: Path, bad: str) -> None:
    code, text = await _run(
        "volunteer", "--url", "http://127.0.0.1:9", "--token", "t", "--lang", "en",
        "--tz", "Europe/London", "--take-after", bad, out=tmp_path / "bad.log", timeout_s=30,
    )  # fmt: skip
    assert code == 2 and "--take-after" in text and repr(bad) in text, text
