"""The floor under the broker's relay figures: what Python and aiohttp alone cost for the relay
the PeerJS server does, with none of the broker's work.

A server speaking only the part of PeerJS's signalling protocol that the load generator beside
the project uses (docs/performance.md, "Side by side with PeerJS"): a WebSocket at ``/peerjs``
registers ``?id=`` and answers ``{"type":"OPEN"}`` (``ID-TAKEN`` and a close for an id in use);
each text message is parsed, stamped with ``src`` and sent on as JSON to the peer named by
``dst``; ``HEARTBEAT`` is read and dropped. Nothing is checked, stored, authorised or queued:
it is a measuring stick, not a server to run. The WebSocket settings, event loop and collector
thresholds are the broker's, so that the difference between its figures and the broker's,
measured by the generator in one run, is what the broker's own work costs.

    python bench/peerjs_floor.py --port PORT
    # with the generator: --server-cmd "python bench/peerjs_floor.py --port {port}"
    #                     --url 'ws://127.0.0.1:{port}/peerjs' (its default adapter, peerjs)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signaling.app import GC_THRESHOLDS  # noqa: E402
from signaling.messages import MAX_FRAME  # noqa: E402

PEERS = web.AppKey("peers", dict[str, web.WebSocketResponse])


async def peerjs(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=2 * MAX_FRAME, autoping=False, compress=False)
    await ws.prepare(request)
    peers = request.app[PEERS]
    peer_id = request.query.get("id", "")
    if not peer_id or peer_id in peers:
        await ws.send_str('{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}')
        await ws.close()
        return ws
    peers[peer_id] = ws
    await ws.send_str('{"type":"OPEN"}')
    try:
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if message.get("type") == "HEARTBEAT":
                continue
            peer = peers.get(message.get("dst"))
            if peer is not None:
                message["src"] = peer_id
                await peer.send_str(json.dumps(message, separators=(",", ":")))
    finally:
        if peers.get(peer_id) is ws:
            del peers[peer_id]
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host != "::1":
        parser.error("--host must be a loopback address")
    app = web.Application()
    app[PEERS] = {}
    app.router.add_get("/peerjs", peerjs)
    # As the broker does after start-up (signaling/app.py).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
