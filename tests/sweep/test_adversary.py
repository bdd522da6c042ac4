"""An adversary between an in-memory client and server, driven by hypothesis's state machines.

``AdversarialSession`` runs one OTP session (``tests.otp_session``: the sans-I/O machines, the
OTP application of both shells, the real OTP store on a SQLite file) for a drawn offer of
suites, server and client key types and randomness, and between the two an adversary that,
step by step, delivers the next frame or flips a bit, truncates, drops, duplicates or swaps a
frame in flight, injects random bytes or a frame recorded from another session (another suite,
either direction), or, when nothing is in flight, fires a waiting side's timeout. A drawn
number of frames goes through honestly first, so that attacks on late frames (the grant, the
close_notify) are as common as attacks on the ClientHello. Invariants, after every step: nothing
raises out of the machines or the application; the client never holds an accepted OTP the
server did not issue, byte for byte, for that client and transaction. At teardown the
adversary stops, what is left is delivered, a side still waiting is ended as its shell's
timeout ends it, and ``check_outcome`` must hold: completed with both sides agreeing, or
failed with alerts and no OTP.

``TTPAdversary`` does the same for the TTP's decisions: an in-memory ``Issuer`` on a real
store (``tests.test_ttp_fixtures.TTPFixture``) is fed enroll, renew and CRL requests, valid
or mutated (by the holder of the secret before the proof or signature, or on the path after),
replays, garbage, and the passing of time. ``Issuer.handle`` must never raise; every reply is
a typed one that encodes and decodes, and a refusal is never internal_error (nothing here
makes the TTP itself fail, so internal_error would be an exception escaping a decoder); no
token and no renewed certificate ever yields more than one certificate, and the store holds
exactly the certificates the replies carried.
"""

from __future__ import annotations

import functools
import secrets
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial import unittest

from tests.credentials import cached_key
from tests.otp_session import (
    DIRECTIONS,
    Session,
    StoreIssuer,
    check_accepted_was_issued,
    check_outcome,
    suite_configs,
)
from tests.test_ttp_fixtures import TTPFixture, csr_der, enroll_request
from tests.vectors.harness import key_type_for
from tlsotp.alerts import Alert
from tlsotp.handshake import ALL_SUITES, KeyExchange, SignatureKind, Suite
from tlsotp.otp import messages
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.ttp import tokens as tokens_module
from tlsotp.ttp import wire
from tlsotp.ttp.renewal_proof import sign_renewal

KEY_TYPES = ("ec-p256", "rsa-2048")
NAMES = ("bank.example", "alice.example")
KEY_LABELS = ("ttp-adversary-a", "ttp-adversary-b")


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


def corrupt_version(der: bytes) -> bytes:
    """A certificate or CSR with its version field changed to a value X.509 does not define
    (cryptography raises ``InvalidVersion``, which is no ``ValueError``, for these)."""
    certificate_version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
    if certificate_version in der:
        return der.replace(certificate_version, b"\xa0\x03\x02\x01\x03", 1)
    return der.replace(b"\x02\x01\x00", b"\x02\x01\x05", 1)  # a CSR's INTEGER 0 (v1), its first field


#: How a requester (or a man in the middle) damages bytes: nothing, a bit, a cut, an extension,
#: the version field. Applied to an embedded CSR or certificate *before* the token proof or the
#: renewal signature is computed (a buggy or hostile holder of the secret), or to the whole
#: request payload after (the path).
MUTATIONS = st.tuples(st.sampled_from(["none"] * 5 + ["flip", "truncate", "extend", "version"]), st.integers(0, 2**16))


def mutate(data: bytes, mutation: tuple[str, int]) -> bytes:
    how, where = mutation
    if how == "flip" and data:
        changed = bytearray(data)
        changed[(where >> 3) % len(changed)] ^= 1 << (where & 7)
        return bytes(changed)
    if how == "truncate" and data:
        return data[: where % len(data)]
    if how == "extend":
        return data + bytes([where & 0xFF]) * (1 + where % 3)
    if how == "version":
        return corrupt_version(data)
    return data


class TTPAdversary(RuleBasedStateMachine):
    tokens = Bundle("tokens")
    certificates = Bundle("certificates")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="tlsotp-ttp-adversary-"))
        self.ttp = TTPFixture(self.directory)
        self.certificates_by_token: dict[str, set[bytes]] = {}
        self.successors: dict[int, set[bytes]] = {}
        self.issued: set[bytes] = set()
        self.sent: list[bytes] = []

    def handle(self, payload: bytes) -> wire.Reply:
        self.sent.append(payload)
        outcome = self.ttp.issuer.handle(payload)  # must not raise, whatever the payload
        reply = outcome.reply
        assert isinstance(reply, (wire.Issued, wire.CRLReply, wire.Refused)), reply
        assert "\n" not in outcome.summary, outcome.summary
        # Typed: a refusal names what was wrong with the request. internal_error is for the
        # TTP's own failures (its database), which nothing here provokes: from peer input
        # it would be an exception that escaped a decoder.
        if isinstance(reply, wire.Refused):
            assert reply.code is not wire.Refusal.internal_error, outcome.summary
        assert wire.decode_reply(wire.encode(reply)) == reply
        if isinstance(reply, wire.Issued):
            self.issued.add(reply.cert_der)
        return reply

    @initialize(target=certificates, name=st.sampled_from(NAMES), role=st.sampled_from(list(Role)))
    def enrolled(self, name: str, role: Role) -> object:
        """One honest enrollment first, so that renewals have something to start from."""
        return self.enroll((self.ttp.token(name, role), name, role), KEY_LABELS[0], None, ("none", 0), ("none", 0))

    @rule(target=tokens, name=st.sampled_from(NAMES), role=st.sampled_from(list(Role)))
    def mint(self, name: str, role: Role) -> tuple[tokens_module.Token, str, Role]:
        return self.ttp.token(name, role), name, role

    @rule(
        target=certificates,
        token=tokens,
        key=st.sampled_from(KEY_LABELS),
        claimed=st.sampled_from((None,) + NAMES),
        csr_mutation=MUTATIONS,
        wire_mutation=MUTATIONS,
    )
    def enroll(self, token: tuple[tokens_module.Token, str, Role], key: str, claimed: str | None,
               csr_mutation: tuple[str, int], wire_mutation: tuple[str, int]) -> object:
        minted, name, role = token
        private_key = cached_key(KeyType.EC_P256, key)
        csr = mutate(csr_der(private_key, claimed or name), csr_mutation)
        request = enroll_request(minted, name, role, private_key, csr=csr)
        reply = self.handle(mutate(wire.encode(request), wire_mutation))
        if not isinstance(reply, wire.Issued):
            return multiple()
        self.certificates_by_token.setdefault(minted.token_id, set()).add(reply.cert_der)
        return reply.cert_der, key

    @rule(
        target=certificates,
        current=certificates,
        new_key=st.sampled_from((None,) + KEY_LABELS),
        cert_mutation=MUTATIONS,
        csr_mutation=MUTATIONS,
        wire_mutation=MUTATIONS,
        skew=st.sampled_from([0, 0, 0, 3600]),
    )
    def renew(self, current: tuple[bytes, str], new_key: str | None, cert_mutation: tuple[str, int],
              csr_mutation: tuple[str, int], wire_mutation: tuple[str, int], skew: int) -> object:
        cert_der, key = current
        signer = cached_key(KeyType.EC_P256, key)
        certificate = x509.load_der_x509_certificate(cert_der)
        name = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )[0]
        presented = mutate(cert_der, cert_mutation)
        csr = mutate(csr_der(cached_key(KeyType.EC_P256, new_key or key), name), csr_mutation)
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        timestamp = int(self.ttp.clock.now.timestamp()) + skew
        request = wire.RenewRequest(presented, csr, nonce, timestamp, sign_renewal(signer, presented, csr, nonce, timestamp))
        reply = self.handle(mutate(wire.encode(request), wire_mutation))
        if not isinstance(reply, wire.Issued):
            return multiple()
        self.successors.setdefault(certificate.serial_number, set()).add(reply.cert_der)
        return reply.cert_der, new_key or key

    @rule(wire_mutation=MUTATIONS)
    def crl(self, wire_mutation: tuple[str, int]) -> None:
        self.handle(mutate(wire.encode(wire.CRLRequest()), wire_mutation))

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 2**16))
    def replay(self, index: int) -> None:
        self.handle(self.sent[index % len(self.sent)])

    @rule(payload=st.binary(max_size=120))
    def garbage(self, payload: bytes) -> None:
        self.handle(payload)

    @rule(hours=st.sampled_from([1, 24, 24 * 8]))
    def time_passes(self, hours: int) -> None:
        self.ttp.clock.advance(hours=hours)

    @invariant()
    def one_certificate_per_token_and_per_renewal(self) -> None:
        assert all(len(certs) == 1 for certs in self.certificates_by_token.values()), self.certificates_by_token
        assert all(len(certs) == 1 for certs in self.successors.values()), self.successors
        # Nothing issued that no reply carried.
        stored = {record.der for record in self.ttp.store.list_certificates()}
        assert stored == self.issued, (len(stored), len(self.issued))

    def teardown(self) -> None:
        self.ttp.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class AdversaryTests(unittest.SynchronousTestCase):
    def test_an_attacked_session_completes_intact_or_fails_with_alerts(self) -> None:
        run_state_machine_as_test(AdversarialSession, settings=settings(stateful_step_count=30))

    def test_the_ttp_answers_every_request_with_a_typed_reply_and_one_certificate_per_token(self) -> None:
        run_state_machine_as_test(TTPAdversary, settings=settings(stateful_step_count=20))


P256_OID = bytes.fromhex("06082a8648ce3d030107")  # 1.2.840.10045.3.1.7
UNKNOWN_CURVE_OID = bytes.fromhex("06082a8648ce3d030106")  # 1.2.840.10045.3.1.6, no curve cryptography knows


class EscapesTheMachinesFound(unittest.SynchronousTestCase):
    """The state machines' findings, each pinned as a plain example: cryptography raises
    ``InvalidVersion`` for an undefined version field and ``UnsupportedAlgorithm`` for an
    unknown curve, neither a ``ValueError``, and the TTP answered both with internal_error.
    (In the handshake the byte-flip sweep pins the certificate version case for every suite.)"""

    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)
        self.key = cached_key(KeyType.EC_P256, KEY_LABELS[0])

    def refusal(self, request: wire.Request) -> wire.Refusal:
        reply = self.ttp.issuer.handle(wire.encode(request)).reply
        assert isinstance(reply, wire.Refused), reply
        return reply.code

    def enroll_with(self, csr: bytes) -> wire.Refusal:
        return self.refusal(enroll_request(self.ttp.token("bank.example", Role.SERVER), "bank.example", Role.SERVER, self.key, csr=csr))

    def renew_with(self, cert_der: bytes) -> wire.Refusal:
        csr = csr_der(self.key, "bank.example")
        nonce, timestamp = secrets.token_bytes(wire.NONCE_BYTES), int(self.ttp.clock.now.timestamp())
        return self.refusal(wire.RenewRequest(cert_der, csr, nonce, timestamp, sign_renewal(self.key, cert_der, csr, nonce, timestamp)))

    def certificate(self) -> bytes:
        request = enroll_request(self.ttp.token("bank.example", Role.SERVER), "bank.example", Role.SERVER, self.key)
        reply = self.ttp.issuer.handle(wire.encode(request)).reply
        assert isinstance(reply, wire.Issued), reply
        return reply.cert_der

    def test_csr_with_an_undefined_version_is_bad_csr(self) -> None:
        csr = csr_der(self.key, "bank.example")
        self.assertNotEqual(corrupt_version(csr), csr)
        self.assertEqual(self.enroll_with(corrupt_version(csr)), wire.Refusal.bad_csr)

    def test_csr_with_an_unknown_curve_is_bad_csr(self) -> None:
        csr = csr_der(self.key, "bank.example")
        self.assertEqual(csr.count(P256_OID), 1)
        self.assertEqual(self.enroll_with(csr.replace(P256_OID, UNKNOWN_CURVE_OID)), wire.Refusal.bad_csr)

    def test_renewal_of_a_certificate_with_an_undefined_version_is_not_renewable(self) -> None:
        cert_der = self.certificate()
        self.assertNotEqual(corrupt_version(cert_der), cert_der)
        self.assertEqual(self.renew_with(corrupt_version(cert_der)), wire.Refusal.not_renewable)

    def test_renewal_of_a_certificate_with_an_unknown_curve_is_not_renewable(self) -> None:
        cert_der = self.certificate()
        self.assertEqual(cert_der.count(P256_OID), 1)
        self.assertEqual(self.renew_with(cert_der.replace(P256_OID, UNKNOWN_CURVE_OID)), wire.Refusal.not_renewable)
