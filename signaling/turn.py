"""ICE servers for clients, with time-limited TURN credentials.

The TURN REST API scheme (draft-uberti-behave-turn-rest, verified by coturn's
``use-auth-secret``): the username is ``<expiry unix time>:<user id>`` and the password is
base64(HMAC-SHA1(shared secret, username)). No state is kept: coturn recomputes the HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any


def turn_credentials(secret: str, user_id: str, now: float, ttl_s: int) -> tuple[str, str]:
    username = f"{int(now) + ttl_s}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(
    stun_urls: list[str],
    turn_urls: list[str],
    turn_secret: str | None,
    user_id: str,
    now: float,
    ttl_s: int,
) -> list[dict[str, Any]]:
    """``RTCIceServer`` dictionaries, as ``RTCPeerConnection`` takes them."""
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls and turn_secret:
        username, credential = turn_credentials(turn_secret, user_id, now, ttl_s)
        servers.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return servers
