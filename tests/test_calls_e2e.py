"""Real calls end to end on 127.0.0.1: the broker, SDK volunteers and a recipient, aiortc media.

Video is proven by reading back the frame number the test pattern stamps into every frame."""

from __future__ import annotations

import asyncio
import contextlib
import time

from clients.roles import Call, Recipient, Volunteer
from signaling.messages import CallAssigned, CallEnded, CallWithdrawn
from tests.calls import (
    CALL_SETTINGS,
    live_peer_connections,
    open_fds,
    recipient,
    until,
    volunteer,
)
from tests.helpers import start_server


def assert_closed(call: Call) -> None:
    media = call.media
    assert media.closed and media.pc.connectionState == "closed"
    assert media.tracks and all(t.readyState == "ended" for t in media.tracks)
    assert not media._tasks, "media tasks left running"


async def test_twenty_volunteers_one_recipient_real_media() -> None:
    async with start_server(first_wave=20, **CALL_SETTINGS) as server:
        vols = [await volunteer(server, f"v{i:02d}") for i in range(20)]
        rec = await recipient(server)
        try:
            status = await rec.request(topic="reading a label")
            assert status.notified == 20
            call = await rec.wait_call(10)
            await until(lambda: any(v.call for v in vols), 5, "the winner's call")
            winners = [v for v in vols if v.call is not None]
            assert len(winners) == 1
            winner = winners[0]
            assert winner.call is not None
            vcall = winner.call
            assert vcall.id == call.id and vcall.assigned.offerer is False
            assert call.assigned.offerer is True
            # Everyone else hears that the call was answered (or lost the accept race).
            for v in vols:
                if v is not winner:
                    await until(lambda v=v: call.id not in v.rings, 5, "withdrawal of the ring")

            await call.wait_connected(10)
            await vcall.wait_connected(10)
            connected = vcall.media.stats.connected_at
            assert connected is not None
            stats = vcall.media.stats
            await until(lambda: len(stats.stamps) >= 30, 5.0, "30 decoded frames")
            assert time.monotonic() - connected <= 5.0 + 0.05
            # The frames decoded are the frames sent: every stamp readable, in order, and sent.
            assert stats.damaged_frames == 0
            assert all(a < b for a, b in zip(stats.stamps, stats.stamps[1:], strict=False))
            assert stats.stamps[-1] < call.media.stats.video_sent
            assert stats.video_size == (640, 480)
            # The volunteer's audio (a 440 Hz tone) reaches the recipient, decoded, not silence.
            rstats = call.media.stats
            await until(lambda: rstats.audio_frames >= 10, 5, "volunteer audio")
            assert rstats.audio_peak > 1000
            assert rstats.video_frames == 0  # the volunteer sends no video

            # Both reported call.media: the broker recorded when media connected.
            record = await server.ctx.store.get_call(call.id)
            assert record is not None and record.media_at is not None

            ended = await call.hang_up()
            assert ended.reason == "completed" and ended.by == "recipient"
            vended = await winner.next_event(CallEnded, 5, call=call.id)
            assert vended.reason == "completed"
            await winner.wait_media_closed()
            assert winner.call is None and rec.call is None
            assert_closed(call)
            assert_closed(vcall)
            frames = (stats.video_frames, rstats.audio_frames)
            await asyncio.sleep(0.3)
            assert (stats.video_frames, rstats.audio_frames) == frames
        finally:
            await rec.close()
            for v in vols:
                await v.close()


async def test_ten_calls_in_a_row_leak_nothing() -> None:
    async with start_server(**CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1")
        rec = await recipient(server)

        async def one_call(i: int) -> None:
            await rec.request()
            call = await rec.wait_call(10)
            await call.wait_connected(10)
            vcall = vol.call
            assert vcall is not None
            await vcall.wait_connected(10)
            await asyncio.wait_for(vcall.media.first_frame.wait(), 5)
            # Alternate who hangs up, so that both paths are measured.
            if i % 2:
                await vcall.hang_up()
                await rec.next_event(CallEnded, 5, call=call.id)
            else:
                await call.hang_up()
                await vol.next_event(CallEnded, 5, call=call.id)
            await rec.wait_media_closed()
            await vol.wait_media_closed()
            assert rec.call is None and vol.call is None

        try:
            await one_call(0)
            fds, tasks = open_fds(), len(asyncio.all_tasks())
            for i in range(1, 10):
                await one_call(i)
            # Closing finishes in the background (sockets, aiortc's own tasks): give it time,
            # then compare with the count after the first call.
            with contextlib.suppress(AssertionError):
                await until(
                    lambda: open_fds() <= fds and len(asyncio.all_tasks()) <= tasks, 5, "cleanup"
                )
            assert open_fds() <= fds, f"open fds grew from {fds} to {open_fds()}"
            assert len(asyncio.all_tasks()) <= tasks, (
                f"tasks grew from {tasks} to {len(asyncio.all_tasks())}: "
                f"{sorted(t.get_name() for t in asyncio.all_tasks())}"
            )
            assert live_peer_connections() == 0
        finally:
            await rec.close()
            await vol.close()


async def _connected_call(server_vol: Volunteer, rec: Recipient) -> tuple[Call, Call]:
    await rec.request()
    call = await rec.wait_call(10)
    await call.wait_connected(10)
    vcall = server_vol.call
    assert vcall is not None
    await vcall.wait_connected(10)
    await asyncio.wait_for(vcall.media.first_frame.wait(), 5)
    return call, vcall


async def test_volunteer_drops_and_resumes_within_grace_media_goes_on() -> None:
    async with start_server(grace_s=10, **CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1")
        rec = await recipient(server)
        try:
            call, vcall = await _connected_call(vol, rec)
            pc = vcall.media.pc
            await vol.client.drop()
            resumed = await vol.next_event(CallAssigned, 10, call=call.id)
            if not resumed.resumed:  # the assignment from before the drop, still queued
                resumed = await vol.next_event(CallAssigned, 10, call=call.id)
            assert resumed.resumed is True and vol.client.resumes == 1
            # The same call and peer connection: media was never torn down.
            assert vol.call is vcall and vcall.media.pc is pc and not vcall.media.closed
            before = len(vcall.media.stats.stamps)
            await until(lambda: len(vcall.media.stats.stamps) >= before + 15, 5, "more frames")
            assert vcall.media.stats.damaged_frames == 0
            assert pc.connectionState == "connected"
            assert rec.call is call
            assert not any(isinstance(e, CallEnded) for e in list(rec.events._queue))
            # The resumed connection works for the call: hang up from the volunteer.
            ended = await vcall.hang_up()
            assert ended.reason == "completed" and ended.by == "volunteer"
            await rec.next_event(CallEnded, 5, call=call.id)
        finally:
            await rec.close()
            await vol.close()


async def test_volunteer_lost_past_grace_ends_call_peer_lost() -> None:
    async with start_server(grace_s=0.5, **CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1", reconnect=False)
        rec = await recipient(server)
        try:
            call, vcall = await _connected_call(vol, rec)
            await vol.client.drop()
            ended = await rec.next_event(CallEnded, 10, call=call.id)
            assert ended.reason == "peer_lost"
            await rec.wait_media_closed()
            assert_closed(call)
            # The volunteer, gone for good, stopped its own media too.
            assert await vol.client.wait_closed() is not None
            await vol.wait_media_closed()
            assert_closed(vcall)
        finally:
            await rec.close()
            await vol.close()


async def test_pending_ring_is_resent_after_resume() -> None:
    async with start_server(grace_s=10, **CALL_SETTINGS) as server:
        vol = await volunteer(server, "v1", auto_accept=False)
        rec = await recipient(server)
        try:
            status = await rec.request()
            await until(lambda: status.call in vol.rings, 5, "the ring")
            vol.rings.clear()
            await vol.client.drop()
            await until(lambda: status.call in vol.rings, 10, "the ring again after resume")
            assert vol.client.resumes == 1
            vcall = await vol.accept(status.call)
            call = await rec.wait_call(5)
            await call.wait_connected(10)
            await vcall.wait_connected(10)
            await call.hang_up()
            assert not any(
                isinstance(e, CallWithdrawn) and e.reason != "answered"
                for e in list(vol.events._queue)
            )
        finally:
            await rec.close()
            await vol.close()
