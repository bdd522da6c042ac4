"""The TTP's group commit (``Issuer.handle_group``, ``Store.group``, the daemon's ``GroupWorker``):
requests that arrive together are decided in one transaction, each in its own savepoint, and
nothing is answered before that transaction is committed; a group that cannot commit refuses
every request in it and keeps nothing."""

from __future__ import annotations

import dataclasses
import datetime
import sqlite3
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults
from twisted.trial import unittest

from tests.test_ttp_fixtures import TTPFixture, cached_key, enroll_request, start_ttp
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.ttp import wire
from tlsotp.ttp.ca import TTPPaths
from tlsotp.ttp.issuer import Outcome
from tlsotp.ttp.store import Store
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal


def sqlite_of(store: Store) -> sqlite3.Connection:
    """The store's own SQLite connection: these tests make SQLite itself fail under it."""
    connection = store._db  # noqa: SLF001 - our store's connection, to drive SQLite's real failures
    assert isinstance(connection, sqlite3.Connection)
    return connection


class HandleGroupTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.ttp = TTPFixture(Path(self.mktemp()))
        self.addCleanup(self.ttp.close)
        self.statements: list[str] = []
        sqlite_of(self.ttp.store).set_trace_callback(self.statements.append)

    def requests(self, count: int, prefix: str = "g") -> list[tuple[str, bytes]]:
        made = []
        for i in range(count):
            name = f"{prefix}{i}.example"
            key = ec.generate_private_key(ec.SECP256R1())
            made.append((name, wire.encode(enroll_request(self.ttp.token(name, Role.CLIENT), name, Role.CLIENT, key))))
        return made

    def outcomes(self, payloads: list[bytes]) -> list[Outcome]:
        results = self.ttp.issuer.handle_group(payloads)
        self.assertEqual(len(results), len(payloads))
        self.assertTrue(all(ok for ok, _ in results))  # never an exception: an Outcome for each
        return [outcome for _, outcome in results]

    def recorded_serials(self) -> set[int]:
        other = self.ttp.open_store()  # another connection: sees only what was committed
        try:
            return {record.serial for record in other.list_certificates()}
        finally:
            other.close()

    def test_one_transaction_and_one_commit_for_the_whole_group(self) -> None:
        requests = self.requests(5)
        del self.statements[:]
        outcomes = self.outcomes([payload for _, payload in requests])
        issued = [x509.load_der_x509_certificate(o.reply.cert_der) for o in outcomes if isinstance(o.reply, wire.Issued)]
        self.assertEqual(len(issued), 5, [o.summary for o in outcomes])
        self.assertEqual(self.statements.count("BEGIN IMMEDIATE"), 1)
        self.assertEqual(self.statements.count("COMMIT"), 1)
        self.assertEqual(self.statements.count("SAVEPOINT decision"), 5)
        self.assertEqual(self.recorded_serials(), {cert.serial_number for cert in issued})

    def test_decisions_in_one_group_see_each_other(self) -> None:
        # The same token twice in one group: with the same key, the second is the first's retry
        # (the same certificate); with another key it finds the token spent.
        name = "twice.example"
        token = self.ttp.token(name, Role.CLIENT)
        key = cached_key(KeyType.EC_P256, "group-twice")
        first = wire.encode(enroll_request(token, name, Role.CLIENT, key))
        retry = wire.encode(enroll_request(token, name, Role.CLIENT, key))
        other = wire.encode(enroll_request(token, name, Role.CLIENT, ec.generate_private_key(ec.SECP256R1())))
        a, b, c = self.outcomes([first, retry, other])
        assert isinstance(a.reply, wire.Issued) and isinstance(b.reply, wire.Issued), (a.summary, b.summary)
        self.assertEqual(a.reply.cert_der, b.reply.cert_der)
        self.assertIn("re-sent serial", b.summary)
        assert isinstance(c.reply, wire.Refused)
        self.assertEqual(c.reply.code, Refusal.token_spent)
        self.assertEqual(len(self.recorded_serials()), 1)

    def test_a_refusal_in_the_group_leaves_the_others_issued(self) -> None:
        good = self.requests(2)
        bad = bytearray(good[1][1])
        bad[-1] ^= 1  # the proof's last byte: it no longer verifies
        outcomes = self.outcomes([good[0][1], bytes(bad), *[p for _, p in self.requests(1, "h")]])
        self.assertIsInstance(outcomes[0].reply, wire.Issued)
        assert isinstance(outcomes[1].reply, wire.Refused)
        self.assertEqual(outcomes[1].reply.code, Refusal.bad_token_proof)
        self.assertIsInstance(outcomes[2].reply, wire.Issued)
        self.assertEqual(len(self.recorded_serials()), 2)

    def test_a_decision_that_raises_is_undone_alone(self) -> None:
        # A drawn serial already in use raises inside record_enrollment, after its INSERT into
        # enrollments: the savepoint must undo that insert, or the Issuer's retry with a fresh
        # serial would fail on the enrollment's primary key.
        (_, first), (_, second) = self.requests(2)
        [issued] = self.outcomes([first])
        assert isinstance(issued.reply, wire.Issued)
        used = x509.load_der_x509_certificate(issued.reply.cert_der).serial_number
        draws = [used]
        real = x509.random_serial_number
        self.patch(x509, "random_serial_number", lambda: draws.pop() if draws else real())
        [outcome] = self.outcomes([second])
        self.assertEqual(draws, [])  # the used serial was drawn first
        assert isinstance(outcome.reply, wire.Issued), outcome.summary
        self.assertNotEqual(x509.load_der_x509_certificate(outcome.reply.cert_der).serial_number, used)
        self.assertEqual(len(self.recorded_serials()), 2)

    def test_a_commit_that_fails_refuses_every_request_and_keeps_nothing(self) -> None:
        requests = self.requests(3)

        def no_commit(action: int, arg1: Any, *_: Any) -> int:
            return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" else sqlite3.SQLITE_OK

        sqlite_of(self.ttp.store).set_authorizer(no_commit)
        outcomes = self.outcomes([payload for _, payload in requests])
        for outcome in outcomes:
            assert isinstance(outcome.reply, wire.Refused), outcome.summary
            self.assertEqual(outcome.reply.code, Refusal.internal_error)
            self.assertIn("nothing of this request was kept", outcome.reply.detail)
            self.assertIn("undone: issued serial", outcome.summary)  # the log line says what was lost
        self.assertEqual(self.recorded_serials(), set())
        # The store is usable again at once, and every requester's retry gets its certificate.
        sqlite_of(self.ttp.store).set_authorizer(None)
        retried = self.outcomes([payload for _, payload in requests])
        self.assertTrue(all(isinstance(o.reply, wire.Issued) for o in retried), [o.summary for o in retried])
        self.assertEqual(len(self.recorded_serials()), 3)

    def test_a_group_sqlite_rolls_back_on_its_own_runs_nothing_after_it(self) -> None:
        # A full database: SQLite answers SQLITE_FULL and rolls the whole transaction back. The
        # decisions after that point must not run in autocommit mode outside the group (they
        # would be kept while their requesters hear a refusal): all are refused, none is kept.
        connection = sqlite_of(self.ttp.store)
        self.outcomes([payload for _, payload in self.requests(2, "warm")])
        before = self.recorded_serials()
        requests = self.requests(20)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")
        outcomes = self.outcomes([payload for _, payload in requests])
        for outcome in outcomes:
            assert isinstance(outcome.reply, wire.Refused), outcome.summary
            self.assertEqual(outcome.reply.code, Refusal.internal_error)
        self.assertEqual(self.recorded_serials(), before)
        for name, _ in requests:
            token_id = next(t for t in self.ttp.store.outstanding_tokens(self.ttp.clock.now) if t.name == name)
            self.assertIsNone(token_id.spent_at)
        connection.execute("PRAGMA max_page_count = 1073741823")
        retried = self.outcomes([payload for _, payload in requests])
        self.assertTrue(all(isinstance(o.reply, wire.Issued) for o in retried), [o.summary for o in retried][:2])


class DaemonGroupTests(unittest.TestCase):
    async def test_requests_of_one_reactor_iteration_share_one_group_answered_after_its_commit(self) -> None:
        base = Path(self.mktemp())
        fixture = TTPFixture(base)
        fixture.close()
        service, _ = start_ttp(self, fixture.data_dir)
        names = [f"d{i}.example" for i in range(6)]
        payloads = [
            wire.encode(enroll_request(fixture.token(name, Role.CLIENT), name, Role.CLIENT,
                                       ec.generate_private_key(ec.SECP256R1())))
            for name in names
        ]
        groups = service.worker.groups
        committed: list[bool] = []

        def visible_elsewhere(outcome: Outcome) -> Outcome:
            # Fired on the reactor once the group returned: another connection already sees it.
            assert isinstance(outcome.reply, wire.Issued), outcome.summary
            serial = x509.load_der_x509_certificate(outcome.reply.cert_der).serial_number
            other = Store.open(TTPPaths(fixture.data_dir).db)
            try:
                committed.append(other.get_certificate(serial) is not None)
            finally:
                other.close()
            return outcome

        # Handed over in one reactor iteration, as requests read in one poll are.
        decided = [service.factory.handle(payload).addCallback(visible_elsewhere) for payload in payloads]
        await gatherResults(decided)
        self.assertEqual(service.worker.groups - groups, 1)
        self.assertEqual(committed, [True] * len(names))


# Requests a group may hold: a valid enrollment, its retry with the same key, the same token with
# another key, a broken proof, a name the token is not for, and bytes that are no request at all.
_KINDS = ("valid", "bad_proof", "wrong_name", "garbage")


class GroupEquivalenceTests(unittest.SynchronousTestCase):
    """Group commit decides exactly what one transaction per request decides: the same replies
    (codes, which requests get the same certificate) and the same store afterwards."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        self.grouped = TTPFixture(base / "grouped")
        self.alone = TTPFixture(base / "alone")
        for fixture in (self.grouped, self.alone):
            self.addCleanup(fixture.close)
        self.keys = [cached_key(KeyType.EC_P256, f"group-equivalence-{i}") for i in range(3)]
        self.round = 0

    @given(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from(_KINDS)), min_size=1, max_size=10),
        st.sets(st.integers(1, 9), max_size=3),
    )
    @settings(max_examples=25, deadline=None)
    def test_a_group_decides_what_one_transaction_each_decides(
        self, actions: list[tuple[int, int, str]], cuts: set[int]
    ) -> None:
        self.round += 1
        names = [f"r{self.round}t{i}.example" for i in range(4)]
        tokens = [Token.generate() for _ in names]
        for fixture in (self.grouped, self.alone):  # the same tokens in both stores
            for token, name in zip(tokens, names):
                fixture.store.add_token(token.token_id, token.mac_key(), name, Role.CLIENT, now=fixture.clock.now,
                                        expires_at=fixture.clock.now + datetime.timedelta(hours=1))
        payloads = []
        for token_index, key_index, kind in actions:
            token, name = tokens[token_index], names[token_index]
            if kind == "garbage":
                payloads.append(bytes([token_index, key_index]) * 3)
                continue
            request = enroll_request(token, name, Role.CLIENT, self.keys[key_index])
            if kind == "bad_proof":
                request = dataclasses.replace(request, proof=bytes(len(request.proof)))
            elif kind == "wrong_name":
                request = enroll_request(token, names[(token_index + 1) % 4], Role.CLIENT, self.keys[key_index])
            payloads.append(wire.encode(request))
        grouped: list[Outcome] = []
        bounds = [0, *sorted(c for c in cuts if c < len(payloads)), len(payloads)]
        for start, end in zip(bounds, bounds[1:]):  # several groups, as the daemon's queue makes them
            grouped += [outcome for _, outcome in self.grouped.issuer.handle_group(payloads[start:end])]
        alone = [self.alone.issuer.handle(payload) for payload in payloads]
        self.assertEqual(self.shape(grouped), self.shape(alone))
        for fixture in (self.grouped, self.alone):
            fixture.store.close()
            fixture.store = fixture.open_store()  # what was committed, from a fresh connection
            fixture.issuer.store = fixture.store
        self.assertEqual(self.state(self.grouped, tokens), self.state(self.alone, tokens))

    def shape(self, outcomes: list[Outcome]) -> list[tuple[str, object]]:
        """Each reply's kind and code; for a certificate, its key and name and the index of the
        first request that got the same certificate (serials are random, the pattern is not)."""
        first: dict[bytes, int] = {}
        shaped: list[tuple[str, object]] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome.reply, wire.Issued):
                cert = x509.load_der_x509_certificate(outcome.reply.cert_der)
                key = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                name = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
                shaped.append(("issued", (key, tuple(name), first.setdefault(outcome.reply.cert_der, i))))
            else:
                assert isinstance(outcome.reply, wire.Refused), outcome.reply
                shaped.append(("refused", outcome.reply.code))
        return shaped

    def state(self, fixture: TTPFixture, tokens: list[Token]) -> list[tuple[bool, bytes | None]]:
        """Per token: spent or not, and the key of the certificate it bought."""
        certificates = {record.serial: record for record in fixture.store.list_certificates()}
        state = []
        for token in tokens:
            record = fixture.store.get_token(token.token_id)
            assert record is not None
            bought = None
            if record.spent_serial is not None:
                cert = certificates[record.spent_serial].certificate()
                bought = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            state.append((record.spent_at is not None, bought))
        return state
