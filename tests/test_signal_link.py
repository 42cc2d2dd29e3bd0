"""Numbered signals, one call's bookkeeping (``clients.signals.SignalLink``), fed by hand."""

from __future__ import annotations

from clients.signals import SignalLink


def test_signals_are_numbered_and_kept_until_acknowledged() -> None:
    link = SignalLink("c1", resend_after_s=1.0)
    assert link.hello() == {"type": "signal.ack", "call": "c1", "seq": 0}
    sent = [link.send({"candidate": {"n": i}}, now=0.0) for i in range(3)]
    assert [m["seq"] for m in sent] == [1, 2, 3]
    assert sent[0] == {"type": "signal", "call": "c1", "seq": 1, "data": {"candidate": {"n": 0}}}
    # Nothing goes again before the peer has said it acknowledges: it might take copies.
    assert link.due(5.0) == [] and link.due(5.0, everything=True) == []
    link.acknowledged(0)
    assert link.peer_acknowledges and link.unacknowledged == 3
    assert link.due(0.5) == []
    assert [m["seq"] for m in link.due(1.0)] == [1, 2, 3]
    assert link.due(1.5) == []  # each waits again after going again
    link.acknowledged(2)
    assert [m["seq"] for m in link.due(2.0)] == [3]
    assert [m["seq"] for m in link.due(2.1, everything=True)] == [3]  # after a resume
    link.acknowledged(3)
    assert link.unacknowledged == 0 and link.due(10.0, everything=True) == []
    assert link.sent_again == 5


def test_what_arrives_is_handed_on_once_and_in_order() -> None:
    link = SignalLink("c1")
    assert link.ack() is None  # nothing arrived: nothing owed
    assert link.receive(1, "offer") == ["offer"]
    assert link.receive(3, "c3") == []  # ahead of a gap: waits
    assert link.receive(4, "c4") == []
    assert link.ack() == {"type": "signal.ack", "call": "c1", "seq": 1}
    assert link.ack() is None
    assert link.receive(2, "c2") == ["c2", "c3", "c4"]
    assert link.receive(3, "c3") == [] and link.receive(1, "offer") == []  # copies
    assert link.copies == 2
    assert link.ack() == {"type": "signal.ack", "call": "c1", "seq": 4}  # copies owe one too
    assert link.receive(5, "c5") == ["c5"]


def test_a_gap_that_never_fills_is_given_up_past_the_hold() -> None:
    link = SignalLink("c1", hold=3)
    assert link.receive(1, "a") == ["a"]
    assert [link.receive(n, n) for n in (3, 4, 5)] == [[], [], []]
    assert link.receive(6, 6) == [3, 4, 5, 6]  # 2 never came: given up, the rest go on
    assert link.gaps_given_up == 1 and link.received == 6
    assert link.receive(2, "late") == []  # too late: counted as a copy
    assert link.copies == 1


def test_a_party_joining_late_sends_unnumbered_and_finds_its_place() -> None:
    link = SignalLink("c1", joined_late=True)
    assert link.send({"candidate": None}, now=0.0) == {
        "type": "signal",
        "call": "c1",
        "data": {"candidate": None},
    }
    assert link.unacknowledged == 0
    assert link.receive(41, "c41") == ["c41"]  # the peer's count goes on from its start
    assert link.receive(43, "c43") == []
    assert link.receive(42, "c42") == ["c42", "c43"]
    assert link.ack() == {"type": "signal.ack", "call": "c1", "seq": 43}
