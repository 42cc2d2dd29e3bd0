"""Media through the deployment's coturn (``deploy/turnserver.conf``) with the time-limited
credentials the brokers hand out at ``/v1/ice-servers`` (TURN REST API, shared secret), relay
only: the peers offer no other candidate, so frames that arrive went through coturn.

Run alone with ``pytest -m deploy``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import (
    RTCConfiguration,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from clients.media import TestPatternTrack, ice_servers
from signaling.auth import mint
from signaling.turn import turn_credentials
from tests.deployment import Deployment
from tests.helpers import SECRET

pytestmark = pytest.mark.deploy

FRAMES = 30


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with Deployment.start(Path(tmp_path_factory.mktemp("turn"))) as d:
        yield d


def ice_servers_for(d: Deployment, sub: str) -> dict[str, Any]:
    """The broker's answer to ``GET /v1/ice-servers``, asked through the balancer."""
    request = urllib.request.Request(
        d.url + "/v1/ice-servers",
        headers={"Authorization": f"Bearer {mint(SECRET, sub, 'volunteer')}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def relay_only(answer: dict[str, Any]) -> RTCPeerConnection:
    config = RTCConfiguration(
        iceServers=ice_servers(answer["ice_servers"]),
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    return RTCPeerConnection(config)


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if " typ " in line}


async def test_aiortc_peers_send_video_through_coturn(deployment: Deployment) -> None:
    d = deployment
    answers = [await asyncio.to_thread(ice_servers_for, d, sub) for sub in ("rec", "vol")]
    for answer in answers:
        turn = next(s for s in answer["ice_servers"] if "username" in s)
        assert f"turn:127.0.0.1:{d.turn_port}?transport=udp" in turn["urls"]
        expiry, user = turn["username"].split(":", 1)
        assert int(expiry) > time.time() and user in ("rec", "vol")
    sender, receiver = relay_only(answers[0]), relay_only(answers[1])
    frames: list[int] = []
    got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    receiver.on(
        "track", lambda track: got_track.set_result(track) if track.kind == "video" else None
    )
    pattern = TestPatternTrack(640, 480, 30)
    sender.addTrack(pattern)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        # Relay candidates only, each an address coturn relays from on loopback.
        for pc in (sender, receiver):
            assert candidate_types(pc.localDescription.sdp) == {"relay"}, pc.localDescription.sdp
        track = await asyncio.wait_for(got_track, 10)
        async with asyncio.timeout(15):
            while len(frames) < FRAMES:
                frame = await track.recv()
                frames.append(frame.pts)
        assert sender.connectionState == receiver.connectionState == "connected"
        low, high = d.relay_ports
        pair = receiver.getTransceivers()[0].receiver.transport.transport.iceGatherer
        relayed = [c for c in pair.getLocalCandidates() if c.type == "relay"]
        assert relayed and all(low <= c.port <= high for c in relayed), relayed
        print(f"\n{len(frames)} frames decoded through coturn, relay ports {low}-{high}")
    finally:
        await sender.close()
        await receiver.close()
    assert len(frames) == FRAMES


async def allocate(d: Deployment, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation with these credentials: coturn's relayed address, or its refusal."""
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, d.turn_address, username=username, password=password
    )
    try:
        relayed = transport.get_extra_info("sockname")
        return str(relayed[0]), int(relayed[1])
    finally:
        transport.close()


async def test_coturn_takes_the_brokers_credentials_and_refuses_others(
    deployment: Deployment,
) -> None:
    d = deployment
    answer = await asyncio.to_thread(ice_servers_for, d, "vol")
    turn = next(s for s in answer["ice_servers"] if "username" in s)
    host, port = await allocate(d, turn["username"], turn["credential"])
    assert host == "127.0.0.1" and d.relay_ports[0] <= port <= d.relay_ports[1]

    refused: dict[str, tuple[str, str]] = {
        "expired": turn_credentials(d.turn_secret, "vol", time.time() - 7200, 3600),
        "signed with another secret": turn_credentials("not-the-secret", "vol", time.time(), 600),
        "forged password": (turn["username"], "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        "changed user": (turn["username"].split(":")[0] + ":someone-else", turn["credential"]),
    }
    for what, (username, password) in refused.items():
        with pytest.raises(stun.TransactionFailed) as failed:
            await allocate(d, username, password)
        code = failed.value.response.attributes["ERROR-CODE"][0]
        assert code == 401, f"{what}: {code}"


OFFER_FROM_THE_PAGE = """async (token) => {
  // As a client would: the ICE servers from the broker, then relay only.
  const answer = await fetch('/v1/ice-servers', {headers: {Authorization: 'Bearer ' + token}});
  const {ice_servers} = await answer.json();
  const pc = new RTCPeerConnection({iceServers: ice_servers, iceTransportPolicy: 'relay'});
  window.pc = pc;
  const camera = await navigator.mediaDevices.getUserMedia({video: true});
  camera.getTracks().forEach((track) => pc.addTrack(track, camera));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') done();
    });
  });
  return pc.localDescription.sdp;
}"""

FRAMES_DECODED_IN_THE_PAGE = """async () => {
  let decoded = 0;
  (await window.pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') decoded += s.framesDecoded || 0;
  });
  return decoded;
}"""


async def test_chromium_and_aiortc_exchange_video_through_coturn(deployment: Deployment) -> None:
    """Chromium's fake camera to aiortc and aiortc's test pattern back, both relay only, both
    configured from ``/v1/ice-servers``; frames decoded on each side are counted."""
    from playwright.async_api import async_playwright

    from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS

    d = deployment
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    peer = relay_only(await asyncio.to_thread(ice_servers_for, d, "vol"))
    got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    peer.on("track", lambda track: got_track.set_result(track) if track.kind == "video" else None)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            await page.goto(d.url + "/healthz")  # the broker's origin, through the balancer
            offer = await page.evaluate(OFFER_FROM_THE_PAGE, mint(SECRET, "rec", "recipient"))
            assert candidate_types(offer) == {"relay"}, offer
            await peer.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            peer.addTrack(TestPatternTrack(640, 480, 30))  # sent back on the camera's m-line
            await peer.setLocalDescription(await peer.createAnswer())
            assert candidate_types(peer.localDescription.sdp) == {"relay"}
            await page.evaluate(
                "(sdp) => window.pc.setRemoteDescription({type: 'answer', sdp})",
                peer.localDescription.sdp,
            )
            track = await asyncio.wait_for(got_track, 10)
            received = 0
            async with asyncio.timeout(15):
                while received < FRAMES:
                    await track.recv()
                    received += 1
            decoded = 0
            for _ in range(75):  # up to 15 s
                decoded = await page.evaluate(FRAMES_DECODED_IN_THE_PAGE)
                if decoded >= FRAMES:
                    break
                await asyncio.sleep(0.2)
            assert decoded >= FRAMES, f"Chromium decoded {decoded} frames"
            state = await page.evaluate("() => window.pc.connectionState")
            print(f"\naiortc decoded {received} camera frames, Chromium {decoded} pattern frames")
            assert state == "connected"
        finally:
            await browser.close()
            await peer.close()
