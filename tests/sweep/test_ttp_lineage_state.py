"""Lineage rules by generation: owners, thieves, lost replies, revocations and time, interleaved.

A hypothesis state machine drives the real Issuer over a real SQLite file. Holders are data
dirs: each has a certificate, its key and maybe a pending key (a request sent, no reply yet);
stealing copies a data dir. After every step the database must satisfy the lineage rules.
"""

from __future__ import annotations

import datetime
import secrets
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.trial.unittest import SynchronousTestCase

from tests.test_ttp_fixtures import TTPFixture, csr_der, enroll_request
from tlsotp.pki.keys import KeyType, PrivateKey, generate_private_key
from tlsotp.pki.roles import Role
from tlsotp.ttp import wire
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.store import AlreadyRevoked, public_key_der
from tlsotp.ttp.wire import Refusal

DER = serialization.Encoding.DER
NAME = "holder.example"
MAX_LINEAGE = datetime.timedelta(days=20)


@dataclass(frozen=True)
class Holder:
    enrollment: str
    cert: x509.Certificate
    key: PrivateKey
    pending: PrivateKey | None = None


class LineageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="tlsotp-lineage-"))
        self.ttp = TTPFixture(self.base)
        self.ttp.issuer.max_lineage = MAX_LINEAGE
        self.holders: list[Holder] = []

    def teardown(self) -> None:
        self.ttp.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def send(self, request: wire.Request) -> wire.Reply:
        outcome = self.ttp.issuer.handle(wire.encode(request))
        assert "\n" not in outcome.summary
        assert outcome.refusal is not Refusal.internal_error, outcome.summary
        return outcome.reply

    def count(self) -> int:
        return len(self.ttp.store.list_certificates())

    @initialize()
    def first_enrollment(self) -> None:
        self.enroll()

    @rule()
    def enroll(self) -> None:
        token = self.ttp.token(NAME, Role.CLIENT)
        key = generate_private_key(KeyType.EC_P256)
        reply = self.send(enroll_request(token, NAME, Role.CLIENT, key))
        assert isinstance(reply, wire.Issued), reply
        # A lost reply, retried: the same certificate, nothing more issued.
        before = self.count()
        again = self.send(enroll_request(token, NAME, Role.CLIENT, key))
        assert again == reply and self.count() == before
        self.holders.append(Holder(token.token_id, x509.load_der_x509_certificate(reply.cert_der), key))

    @precondition(lambda self: self.holders)
    @rule(data=st.data())
    def steal(self, data: st.DataObject) -> None:
        """Someone copies a holder's data dir (key, certificate, pending key)."""
        self.holders.append(data.draw(st.sampled_from(self.holders)))

    @precondition(lambda self: self.holders)
    @rule(data=st.data())
    def steal_and_renew(self, data: st.DataObject) -> None:
        """A thief copies a data dir and renews at once, with a key of its own."""
        self.steal(data)
        self.holders[-1] = replace(self.holders[-1], pending=None)
        self.renew_holder(len(self.holders) - 1, fresh_key=True, lose_reply=False)

    def renewal(self, holder: Holder, new_key: PrivateKey) -> wire.RenewRequest:
        cert_der = holder.cert.public_bytes(DER)
        csr = csr_der(new_key, NAME)
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        timestamp = int(self.ttp.clock.now.timestamp())
        return wire.RenewRequest(cert_der, csr, nonce, timestamp, sign_renewal(holder.key, cert_der, csr, nonce, timestamp))

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), fresh_key=st.booleans(), lose_reply=st.booleans())
    def renew(self, data: st.DataObject, fresh_key: bool, lose_reply: bool) -> None:
        self.renew_holder(data.draw(st.integers(0, len(self.holders) - 1)), fresh_key, lose_reply)

    def renew_holder(self, index: int, fresh_key: bool, lose_reply: bool) -> None:
        holder = self.holders[index]
        store = self.ttp.store
        if holder.pending is not None:
            key = holder.pending  # what enroll.renew does: a pending key is always finished first
        elif fresh_key:
            key = generate_private_key(KeyType.EC_P256)
            holder = replace(holder, pending=key)
        else:
            key = holder.key
        record = store.get_certificate(holder.cert.serial_number)
        assert record is not None and record.enrollment == holder.enrollment
        enrollment = store.get_enrollment(holder.enrollment)
        assert enrollment is not None
        was_open = enrollment.revoked_at is None
        successor = None if record.superseded_by is None else store.get_certificate(record.superseded_by)
        is_retry = (
            successor is not None and successor.superseded_by is None and successor.revoked_at is None
            and self.ttp.clock.now <= successor.not_after and successor.public_key_der() == public_key_der(key.public_key())
        )
        before = self.count()
        reply = self.send(self.renewal(holder, key))
        if isinstance(reply, wire.Issued):
            leaf = x509.load_der_x509_certificate(reply.cert_der)
            assert public_key_der(leaf.public_key()) == public_key_der(key.public_key())
            if record.superseded_by is not None:  # only ever as the same renewal again
                assert is_retry and leaf.serial_number == record.superseded_by and self.count() == before
            if lose_reply:  # the same request again gets the same answer and issues nothing
                again = self.send(self.renewal(holder, key))
                assert again == reply and self.count() == before + (record.superseded_by is None)
                reply = again
            holder = Holder(holder.enrollment, leaf, key)
        else:
            assert isinstance(reply, wire.Refused)
            assert reply.code is Refusal.not_renewable, reply
            assert self.count() == before
            if record.superseded_by is not None and was_open and not is_retry:
                revoked = store.get_enrollment(holder.enrollment)
                assert revoked is not None and revoked.revocation_reason is x509.ReasonFlags.key_compromise
        self.holders[index] = holder

    @precondition(lambda self: self.holders)
    @rule(data=st.data())
    def operator_revokes(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(self.holders))
        try:
            self.ttp.store.revoke(holder.cert.serial_number, x509.ReasonFlags.unspecified, now=self.ttp.clock.now)
        except AlreadyRevoked:
            pass

    @rule(hours=st.integers(1, 60))
    def time_passes(self, hours: int) -> None:
        self.ttp.clock.advance(hours=hours)

    @invariant()
    def lineage_rules_hold(self) -> None:
        store = self.ttp.store
        records = store.list_certificates()
        revoked = {r.serial for r in store.revocations()}
        by_enrollment: dict[str, list[object]] = {}
        for record in records:
            assert record.enrollment is not None
            enrollment = store.get_enrollment(record.enrollment)
            assert enrollment is not None
            by_enrollment.setdefault(record.enrollment, []).append(record)
            # No certificate outlives its lineage.
            assert record.not_after <= enrollment.started_at + MAX_LINEAGE
            if enrollment.revoked_at is not None:
                # Nothing issued after the lineage was revoked; everything live then is revoked.
                assert record.issued_at <= enrollment.revoked_at
                if record.not_after >= enrollment.revoked_at:
                    assert record.serial in revoked, record
        for members in by_enrollment.values():
            heads = [m for m in members if m.superseded_by is None]  # type: ignore[attr-defined]
            assert len(heads) == 1  # a lineage is one chain: exactly one current certificate


class LineageStateTests(SynchronousTestCase):
    def test_lineage_rules_under_arbitrary_interleavings(self) -> None:
        LineageMachine.TestCase.settings = settings(
            settings.default, max_examples=max(10, settings.default.max_examples // 3), stateful_step_count=20  # type: ignore[union-attr]
        )
        LineageMachine.TestCase("runTest").runTest()
