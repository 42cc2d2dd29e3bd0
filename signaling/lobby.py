"""This node's lobby watchers: sessions that opened the lobby, kept up to date.

Every ``interval_s`` (1 s) while anyone here watches, one pass reads the lobby for the
languages the watchers speak (``broker.lobby.Lobby.read``: one store read per language, shared
by every watcher of the node), checks each watcher may still watch (on duty, not suspended, not
in a call), and sends each session its list when it changed since the last one it was sent.
That is the bound on a watcher: at most one ``lobby`` per pass, each of at most 20 entries.
The pass reads the store, not this node's events, so a request answered, cancelled or given up
on any node leaves every node's lists within a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from broker.lobby import LobbyClosed, LobbyView, may_watch
from broker.model import BrokerError, ErrorCode, Profile
from broker.service import Broker
from broker.store.base import StoreUnavailable
from signaling.hub import Session
from signaling.messages import LobbyEntryWire, LobbyMessage

log = logging.getLogger("vabroker.lobby")


@dataclass(slots=True)
class _Watch:
    profile: Profile
    sent: LobbyView | None = None


def lobby_message(view: LobbyView, now: float, ref: str | None = None) -> LobbyMessage:
    return LobbyMessage(
        entries=[
            LobbyEntryWire(
                call=e.call_id,
                language=e.language,
                topic=e.topic,
                waiting_s=max(0, int(now - e.requested_at)),
                requested_at=e.requested_at,
            )
            for e in view.entries
        ],
        more=view.more,
        ref=ref,
    )


def closed_message(reason: LobbyClosed) -> LobbyMessage:
    return LobbyMessage(entries=[], more=0, closed=True, reason=reason.value)


_REFUSED = {
    LobbyClosed.OFF_DUTY: "Go on duty to open the lobby.",
    LobbyClosed.IN_CALL: "You are in a call; open the lobby again after it.",
}


class LobbyWatchers:
    def __init__(self, broker: Broker, interval_s: float = 1.0) -> None:
        self.broker = broker
        self.interval_s = interval_s
        self.watching: dict[Session, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def open(self, session: Session, ref: str | None) -> None:
        """``lobby.open``: refuse, or send the list at once and keep the session up to date."""
        broker = self.broker
        profile = await broker.store.get_profile(session.user_id) or session.profile
        if not may_watch(profile):
            raise BrokerError(ErrorCode.FORBIDDEN, "Only volunteers open the lobby.")
        await broker.safety.check(profile.user_id)
        why = await broker.lobby.why_closed(profile)
        if why is not None:
            raise BrokerError(ErrorCode.CONFLICT, _REFUSED.get(why, "You cannot watch now."))
        view = broker.lobby.view(profile, await broker.lobby.read(profile.languages))
        session.send(lobby_message(view, broker.clock.now(), ref))
        self.watching[session] = _Watch(profile, view)

    def close(self, session: Session) -> None:
        """``lobby.close``, or the session ended: no more lists."""
        self.watching.pop(session, None)

    def closed_for(self, user_id: str, reason: LobbyClosed) -> None:
        """The broker closes the user's lobby on this node's sessions (they went off duty,
        entered a call): each watching session is told so."""
        for session in [s for s in self.watching if s.user_id == user_id]:
            del self.watching[session]
            session.send(closed_message(reason))

    async def refresh(self) -> None:
        """One pass over this node's watchers (see the module's docstring)."""
        if not self.watching:
            return
        broker = self.broker
        users = sorted({s.user_id for s in self.watching})
        profiles = await asyncio.gather(*(broker.store.get_profile(u) for u in users))
        fresh = {u: p for u, p in zip(users, profiles, strict=True) if p is not None}
        closed = await asyncio.gather(*(broker.lobby.why_closed(p) for p in fresh.values()))
        why = dict(zip(fresh, closed, strict=True))
        languages = {tag for p in fresh.values() for tag in p.languages}
        listing = await broker.lobby.read(languages)
        now = broker.clock.now()
        for session, watch in list(self.watching.items()):
            if self.watching.get(session) is not watch:
                continue  # closed meanwhile
            profile = fresh.get(session.user_id)
            reason = why.get(session.user_id) if profile else LobbyClosed.OFF_DUTY
            if reason is not None:
                del self.watching[session]
                session.send(closed_message(reason))
                continue
            assert profile is not None
            watch.profile = profile
            view = broker.lobby.view(profile, listing)
            if view != watch.sent:
                watch.sent = view
                session.send(lobby_message(view, now))

    # --- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="lobby")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except StoreUnavailable:
                log.warning("store unavailable: lobby lists not refreshed")
            except Exception:
                log.exception("lobby refresh")
