"""The slot bookkeeping both daemons share, checked against a plain model by hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from tlsotp.services.connection_slots import ConnectionSlots, SlotKeeper, address_key


@dataclass
class Entry:
    handle: int
    address: str
    spoken: bool


class SlotsMachine(RuleBasedStateMachine):
    """Admit, speak and release in any order; the class must agree with a list-based model."""

    def __init__(self) -> None:
        super().__init__()
        self.model: list[Entry] = []  # admission order: oldest first
        self.next_handle = 0
        self.gone: list[int] = []

    @initialize(total=st.integers(1, 8), per=st.integers(1, 10))
    def caps(self, total: int, per: int) -> None:
        self.slots: ConnectionSlots[int] = ConnectionSlots(total, per)
        self.total, self.per = total, min(per, total)

    def oldest_silent(self, entries: list[Entry]) -> Entry | None:
        return next((e for e in entries if not e.spoken), None)

    @rule(address=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
    def admit(self, address: str) -> None:
        handle, self.next_handle = self.next_handle, self.next_handle + 1
        admission = self.slots.admit(handle, address)
        expected_evicted: list[int] = []
        model = list(self.model)
        refused = None
        if sum(e.address == address for e in model) >= self.per:
            victim = self.oldest_silent([e for e in model if e.address == address])
            if victim is None:
                refused = "per-address"
            else:
                model.remove(victim)
                expected_evicted.append(victim.handle)
        if refused is None and len(model) >= self.total:
            victim = self.oldest_silent(model)
            if victim is None:
                refused = "total"
            else:
                model.remove(victim)
                expected_evicted.append(victim.handle)
        if refused is not None:
            assert not admission.admitted and admission.full == refused and admission.evicted == (), admission
            return
        assert admission.admitted and admission.full is None, admission
        assert list(admission.evicted) == expected_evicted, (admission, expected_evicted)
        model.append(Entry(handle, address, False))
        self.model = model
        self.gone.extend(expected_evicted)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def speak(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.model))
        self.slots.spoke(entry.handle)
        entry.spoken = True

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.model))
        self.slots.release(entry.handle)
        self.model.remove(entry)
        self.gone.append(entry.handle)

    @precondition(lambda self: self.gone)
    @rule(data=st.data())
    def late_news_about_a_gone_connection(self, data: st.DataObject) -> None:
        # An evicted connection's own connectionLost (or a late first message) changes nothing.
        handle = data.draw(st.sampled_from(self.gone))
        self.slots.spoke(handle)
        self.slots.release(handle)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "slots"):
            return
        assert len(self.slots) == len(self.model) <= self.total
        for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            assert self.slots.count(address) == sum(e.address == address for e in self.model) <= self.per
        assert self.slots.silent == sum(not e.spoken for e in self.model)
        for entry in self.model:
            assert entry.handle in self.slots
            assert self.slots.is_silent(entry.handle) is not entry.spoken
        for handle in self.gone:
            assert handle not in self.slots


class SlotsMachineTests(SlotsMachine.TestCase):  # type: ignore[misc, name-defined, valid-type]
    def test_against_the_model(self) -> None:
        self.runTest()


class ConnectionSlotsExamples(unittest.SynchronousTestCase):
    def test_a_flood_from_the_clients_own_address_gives_way(self) -> None:
        slots: ConnectionSlots[str] = ConnectionSlots(max_connections=4, max_per_address=2)
        for i in range(1000):
            self.assertTrue(slots.admit(f"idle{i}", "127.0.0.1").admitted)
        admission = slots.admit("client", "127.0.0.1")
        self.assertEqual(admission.evicted, ("idle998",))
        slots.spoke("client")
        for i in range(1000, 1010):
            self.assertTrue(slots.admit(f"idle{i}", "127.0.0.1").admitted)
        self.assertIn("client", slots)
        self.assertEqual(len(slots), 2)

    def test_refused_only_when_everyone_has_spoken(self) -> None:
        slots: ConnectionSlots[str] = ConnectionSlots(max_connections=2, max_per_address=2)
        for name, address in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
            slots.admit(name, address)
            slots.spoke(name)
        admission = slots.admit("c", "10.0.0.3")
        self.assertEqual((admission.admitted, admission.full), (False, "total"))
        slots.release("a")
        self.assertTrue(slots.admit("c", "10.0.0.3").admitted)

    def test_caps_must_be_positive(self) -> None:
        for caps in ((0, 1), (1, 0)):
            with self.assertRaises(ValueError):
                ConnectionSlots(*caps)


class AddressKeyTests(unittest.SynchronousTestCase):
    def test_keys(self) -> None:
        self.assertEqual(address_key(IPv4Address("TCP", "127.0.0.2", 4000)), "127.0.0.2")
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 4000)), "2001:db8:1:2::/64")
        self.assertEqual(address_key(IPv6Address("TCP", "2001:db8:1:2:ffff::1", 4000)), "2001:db8:1:2::/64")
        self.assertEqual(address_key(IPv6Address("TCP", "::ffff:10.1.2.3", 4000)), "10.1.2.3")
        self.assertEqual(address_key(IPv6Address("TCP", "fe80::1%eth0", 4000)), "fe80::/64")
        self.assertEqual(address_key(UNIXAddress(b"/tmp/s")), "local")
        self.assertEqual(address_key(None), "unknown")


class Occupant:
    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


class SlotKeeperTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines: list[str] = []
        self.keeper = SlotKeeper(
            max_connections=3, max_per_address=2, call_later=self.clock.callLater,
            log=Logger(observer=lambda event: self.lines.append(formatEvent(event))),  # type: ignore[arg-type]
        )

    def test_evictions_are_logged_once_then_counted_per_interval(self) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 1)
        occupants = [Occupant() for _ in range(500)]
        for occupant in occupants:
            self.assertTrue(self.keeper.admit(occupant, address))
        self.assertEqual(sum(o.evicted for o in occupants), 498)
        self.assertEqual(len(self.lines), 1, self.lines)
        self.assertIn("closed a silent connection to make room for one from 127.0.0.1", self.lines[0])
        self.clock.advance(10)
        self.assertEqual(len(self.lines), 2, self.lines)
        self.assertIn("497 silent connections closed to make room", self.lines[1])
        self.assertIn("2 of 3 slots in use", self.lines[1])
        # The interval stays open while events come: the next one is counted, not logged.
        self.keeper.admit(Occupant(), address)
        self.assertEqual(len(self.lines), 2)
        self.clock.advance(10)
        self.assertIn("1 silent connections closed", self.lines[2])
        # A quiet interval closes it: the next event is logged at once again.
        self.clock.advance(10)
        self.assertEqual(len(self.lines), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.keeper.admit(Occupant(), address)
        self.assertEqual(len(self.lines), 4)

    def test_refusals_and_stop(self) -> None:
        speakers = [Occupant() for _ in range(3)]
        for i, occupant in enumerate(speakers):
            self.assertTrue(self.keeper.admit(occupant, IPv4Address("TCP", f"10.0.0.{i}", 1)))
            self.keeper.spoke(occupant)
        for _ in range(5):
            self.assertFalse(self.keeper.admit(Occupant(), IPv4Address("TCP", "10.0.0.9", 1)))
        self.assertEqual(len(self.lines), 1)
        self.assertIn("refused a connection from 10.0.0.9: all 3 slots hold connections that have spoken", self.lines[0])
        self.keeper.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("4 connections refused", self.lines[1])
        # After the factory stopped, a straggler is logged as it comes, and no timer is left behind.
        self.assertFalse(self.keeper.admit(Occupant(), IPv4Address("TCP", "10.0.0.9", 1)))
        self.assertEqual(len(self.lines), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.keeper.start()
        self.keeper.admit(Occupant(), IPv4Address("TCP", "10.0.0.9", 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.keeper.totals["refused"], 7)
        self.assertFalse(any(o.evicted for o in speakers))
