"""Numbered signals: one call's signalling kept whole when a broker node dies mid-call.

The broker relays a ``signal`` once, but a node killed at the wrong moment takes with it what
it had read and not yet passed on, or had not yet written to its client; neither party can
tell which. So the parties number their signals and acknowledge what arrived, end to end
(docs/protocol.md, "Numbered signals"): the broker relays ``seq`` and ``signal.ack`` like any
signal and keeps nothing. ``SignalLink`` is that bookkeeping for one call, without I/O: the
caller sends what it returns and feeds it what arrives, with the time.

- Each signal sent gets the next ``seq`` and is kept until the peer acknowledges it.
- A peer acknowledges with the highest ``seq`` up to which everything arrived; it says it
  does so at all with ``signal.ack`` ``seq`` 0 as the call starts. Only then is anything sent
  again: a peer that ignores ``seq`` would take a copy as a new signal.
- What is not acknowledged after ``resend_after_s`` is sent again (the same ``seq``), and all of
  it right after a resume.
- What arrives is handed on once and in order: copies are dropped, a signal arriving ahead of
  a gap waits for the gap (an SDP answer before the candidates that follow it). At most
  ``hold`` wait; past that the gap is given up, so that a sender that gave up cannot stall the
  call.
- A party that joins a call late (a new process resuming it: the earlier count is gone) sends
  its signals unnumbered, and takes the first numbered signal it gets as where the peer is.
"""

from __future__ import annotations

from typing import Any

Wire = dict[str, Any]


class SignalLink:
    def __init__(
        self, call: str, resend_after_s: float = 1.0, hold: int = 1000, joined_late: bool = False
    ) -> None:
        self.call = call
        self.numbered = not joined_late
        self._find_place = joined_late
        self.resend_after_s = resend_after_s
        self.hold = hold
        self.peer_acknowledges = False
        self.received = 0  # every signal from the peer up to this one was handed on
        self.copies = 0  # signals that arrived again, dropped
        self.sent_again = 0
        self.gaps_given_up = 0
        self._sent = 0
        self._unacked: dict[int, list[Any]] = {}  # seq -> [message, last sent]; seq order
        self._early: dict[int, Any] = {}  # arrived ahead of a gap: seq -> data
        self._ack_owed = False

    def hello(self) -> Wire:
        """Said once as the call starts: this party acknowledges numbered signals."""
        return self.acknowledgement()

    def send(self, data: Any, now: float) -> Wire:
        if not self.numbered:
            return {"type": "signal", "call": self.call, "data": data}
        self._sent += 1
        message = {"type": "signal", "call": self.call, "seq": self._sent, "data": data}
        self._unacked[self._sent] = [message, now]
        return message

    @property
    def unacknowledged(self) -> int:
        return len(self._unacked)

    def acknowledged(self, seq: int) -> None:
        self.peer_acknowledges = True
        for sent in list(self._unacked):
            if sent > seq:
                break
            del self._unacked[sent]

    def due(self, now: float, everything: bool = False) -> list[Wire]:
        """What to send again now: not acknowledged for ``resend_after_s``, or ``everything``
        not acknowledged (after a resume). Nothing while the peer has not said it
        acknowledges."""
        if not self.peer_acknowledges:
            return []
        again = []
        for entry in self._unacked.values():
            if everything or now - entry[1] >= self.resend_after_s:
                entry[1] = now
                again.append(entry[0])
        self.sent_again += len(again)
        return again

    def receive(self, seq: int, data: Any) -> list[Any]:
        """A numbered signal arrived: the signals' data now to be handed on, in order."""
        self._ack_owed = True
        if self._find_place:
            self._find_place = False
            self.received = seq - 1
        if seq <= self.received or seq in self._early:
            self.copies += 1
            return []
        self._early[seq] = data
        if len(self._early) > self.hold:
            self.gaps_given_up += 1
            self.received = min(self._early) - 1
        ready = []
        while self.received + 1 in self._early:
            self.received += 1
            ready.append(self._early.pop(self.received))
        return ready

    def ack(self) -> Wire | None:
        """The acknowledgement owed for what arrived since the last one (None: none owed)."""
        if not self._ack_owed:
            return None
        return self.acknowledgement()

    def acknowledgement(self) -> Wire:
        """Everything up to ``received`` arrived (0: nothing yet, and this party acknowledges
        numbered signals, as said at the start of the call)."""
        self._ack_owed = False
        return {"type": "signal.ack", "call": self.call, "seq": self.received}
