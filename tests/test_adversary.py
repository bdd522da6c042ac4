"""An adversary between an in-memory client and server, driven by hypothesis's state machines.

``AdversarialSession`` runs one OTP session (``tests.otp_session``: the sans-I/O machines, the
OTP application of both shells, the real OTP store on a SQLite file) for a drawn offer of
suites, server and client key types and randomness, and between the two an adversary that,
step by step, delivers the next frame or flips a bit, truncates, drops, duplicates or swaps a
frame in flight, injects random bytes or a frame recorded from another session (another suite,
either direction), or fires a side's timeout early. Invariants, after every step: nothing
raises out of the machines or the application; the client never holds an accepted OTP the
server did not issue, byte for byte, for that client and transaction. At teardown the
adversary stops, what is left is delivered, a side still waiting is ended as its shell's
timeout ends it, and ``check_outcome`` must hold: completed with both sides agreeing, or
failed with alerts and no OTP.

``TTPAdversary`` does the same for the TTP's decisions: an in-memory ``Issuer`` on a real
store is fed enroll, renew and CRL requests, valid or mutated; ``Issuer.handle`` must never
raise, every reply must be a typed one, and no token ever yields more than one certificate.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from twisted.trial import unittest

from tlsotp.alerts import Alert
from tlsotp.handshake import ALL_SUITES, KeyExchange, SignatureKind, Suite
from tlsotp.otp import messages
from tests.otp_session import (
    DIRECTIONS,
    Session,
    StoreIssuer,
    check_accepted_was_issued,
    check_outcome,
    suite_configs,
)
from tests.vectors.harness import key_type_for

KEY_TYPES = ("ec-p256", "rsa-2048")


@functools.cache
def recorded_frames() -> tuple[bytes, ...]:
    """Every frame of good sessions of three kinds of suite, both directions, other randoms."""
    kinds = (
        next(s for s in ALL_SUITES if s.authentication is SignatureKind.ECDSA),
        next(s for s in ALL_SUITES if s.key_exchange is KeyExchange.ECDHE and s.authentication is SignatureKind.RSA_PSS),
        next(s for s in ALL_SUITES if s.key_exchange is KeyExchange.RSA_OAEP),
    )
    frames: list[bytes] = []
    with tempfile.TemporaryDirectory() as directory:
        issuer = StoreIssuer(Path(directory) / "otp.sqlite3")
        try:
            for suite in kinds:
                session = Session(*suite_configs(suite, server_key=key_type_for(suite), seed="recorded"), issuer)
                while (direction := session.next_direction()) is not None:
                    frames.append(session.queues[direction][0])
                    session.deliver(direction)
                session.finish()
                assert check_outcome(session) == "completed"
        finally:
            issuer.close()
    return tuple(frames)


class AdversarialSession(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="tlsotp-adversary-"))
        self.issuer = StoreIssuer(self.directory / "otp.sqlite3")
        self.session: Session | None = None

    @initialize(
        offer=st.lists(st.sampled_from(ALL_SUITES), min_size=1, max_size=4, unique=True),
        server_key=st.sampled_from(("for-the-first-offered-suite",) + KEY_TYPES),
        client_key=st.sampled_from(KEY_TYPES),
        seed=st.integers(0, 2**32),
        honest_start=st.integers(0, 12),
    )
    def start(self, offer: list[Suite], server_key: str, client_key: str, seed: int, honest_start: int) -> None:
        """A session, and ``honest_start`` frames let through before the adversary wakes up
        (so that attacks on late frames, the grant and the close_notify, are common too)."""
        # The server accepts every suite its key can authenticate, in its own order; an offer
        # with none of them is refused (insufficient_security), which is an outcome like another.
        if server_key not in KEY_TYPES:
            server_key = key_type_for(offer[0])
        self.session = Session(
            *suite_configs(tuple(offer), server_key=server_key, client_key=client_key, server_suites=ALL_SUITES,
                           seed=str(seed)),
            self.issuer,
        )
        self.run_honestly(honest_start)

    # -- helpers ----------------------------------------------------------------------------

    @property
    def s(self) -> Session:
        assert self.session is not None
        return self.session

    def in_flight(self) -> bool:
        return self.session is not None and any(self.session.queues.values())

    def queue(self, which: int) -> list[bytes]:
        """One of the non-empty queues (there is one: every rule using this requires it)."""
        queues = [self.s.queues[d] for d in DIRECTIONS if self.s.queues[d]]
        return queues[which % len(queues)]

    # -- the network and the adversary ------------------------------------------------------

    @precondition(in_flight)
    @rule(which=st.integers(0, 1))
    def deliver(self, which: int) -> None:
        direction = next(d for d in DIRECTIONS if self.s.queues[d] is self.queue(which))
        self.s.deliver(direction)

    @precondition(in_flight)
    @rule(count=st.integers(1, 16))
    def run_honestly(self, count: int) -> None:
        """Let up to ``count`` frames through in the network's order (so sessions get far)."""
        for _ in range(count):
            if (direction := self.s.next_direction()) is None:
                return
            self.s.deliver(direction)

    @precondition(in_flight)
    @rule(which=st.integers(0, 1), position=st.integers(0, 2**16), bit=st.integers(0, 7))
    def flip_bit(self, which: int, position: int, bit: int) -> None:
        queue = self.queue(which)
        index = position % len(queue)
        frame = bytearray(queue[index])
        if frame:
            frame[(position // len(queue)) % len(frame)] ^= 1 << bit
            queue[index] = bytes(frame)

    @precondition(in_flight)
    @rule(which=st.integers(0, 1), position=st.integers(0, 2**16), keep=st.integers(0, 2**16))
    def truncate(self, which: int, position: int, keep: int) -> None:
        queue = self.queue(which)
        index = position % len(queue)
        if queue[index]:
            queue[index] = queue[index][: keep % len(queue[index])]

    @precondition(in_flight)
    @rule(which=st.integers(0, 1), position=st.integers(0, 2**16))
    def drop(self, which: int, position: int) -> None:
        queue = self.queue(which)
        del queue[position % len(queue)]

    @precondition(in_flight)
    @rule(which=st.integers(0, 1), position=st.integers(0, 2**16))
    def duplicate(self, which: int, position: int) -> None:
        queue = self.queue(which)
        index = position % len(queue)
        queue.insert(index, queue[index])

    @precondition(in_flight)
    @rule(which=st.integers(0, 1), first=st.integers(0, 2**16), second=st.integers(0, 2**16))
    def swap(self, which: int, first: int, second: int) -> None:
        queue = self.queue(which)
        i, j = first % len(queue), second % len(queue)
        queue[i], queue[j] = queue[j], queue[i]

    @precondition(lambda self: self.session is not None)
    @rule(
        direction=st.sampled_from(DIRECTIONS),
        position=st.integers(0, 2**16),
        frame=st.one_of(
            st.binary(max_size=80),
            st.tuples(st.sampled_from([21, 22, 23]), st.binary(max_size=80)).map(lambda t: bytes([t[0]]) + t[1]),
            st.integers(0, 2**16).map(lambda i: recorded_frames()[i % len(recorded_frames())]),
        ),
    )
    def inject(self, direction: str, position: int, frame: bytes) -> None:
        queue = self.s.queues[direction]
        queue.insert(position % (len(queue) + 1), frame)

    @precondition(lambda self: self.session is not None and not self.session.over and not self.in_flight())
    @rule(client=st.booleans())
    def time_out(self, client: bool) -> None:
        """With nothing in flight, a waiting side's shell gives up (its timeout, or its peer's
        TCP close) before the adversary's next move, which may still target the other side."""
        waiting = [side for side in (self.s.client, self.s.server) if not side.ended]
        side = waiting[0 if client else -1]
        side.timed_out = True
        side.abort(Alert.handshake_failure, "timed out waiting for the peer")
        self.s.collect()

    # -- what must always hold -----------------------------------------------------------------

    @invariant()
    def no_otp_accepted_unless_issued(self) -> None:
        if self.session is None:
            return
        check_accepted_was_issued(self.session)
        accepted = self.session.client.accepted
        if accepted is not None:
            assert self.session.server.granted == messages.encode(accepted)

    def teardown(self) -> None:
        try:
            if self.session is not None:
                self.session.finish()
                check_outcome(self.session)
        finally:
            self.issuer.close()
            shutil.rmtree(self.directory, ignore_errors=True)


class AdversaryTests(unittest.SynchronousTestCase):
    def test_an_attacked_session_completes_intact_or_fails_with_alerts(self) -> None:
        run_state_machine_as_test(AdversarialSession, settings=settings(stateful_step_count=30))
