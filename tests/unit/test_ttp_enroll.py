"""Enrollment, renewal and CRL fetching over real loopback TCP against a running TTP service."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from tests.test_ttp_fixtures import mint_token, reactor, start_ttp
from tlsotp.alerts import Alert, AlertError
from tlsotp.pki import pem
from tlsotp.pki.credentials import NEXT_KEY_FILE, write_credentials
from tlsotp.pki.keys import KeyType, describe_key
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier
from tlsotp.services.enrollment import (
    AlreadyEnrolled,
    Credentials,
    EnrollmentRefused,
    NotEnrolled,
    RootPin,
    TTPUnavailable,
    enroll,
    fetch_crl,
    load_credentials,
    renew,
)
from tlsotp.ttp.ca import TTPPaths, init_ca
from tlsotp.ttp.store import Store
from tlsotp.ttp.wire import Refusal


class TCPTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.ttp_dir = self.base / "ttp"
        self.ca = init_ca(self.ttp_dir)
        self.pin = RootPin.from_fingerprint(self.ca.fingerprint)
        self.service, self.endpoint = start_ttp(self, self.ttp_dir)

    def token(self, name: str = "bank.example", role: Role = Role.SERVER) -> str:
        return str(mint_token(self.ttp_dir, name, role))

    def enroll(self, party: str, name: str = "bank.example", role: Role = Role.SERVER, **kw: Any) -> Deferred[Credentials]:
        kw.setdefault("token", self.token(name, role))
        kw.setdefault("pin", self.pin)
        return enroll(reactor, self.endpoint, data_dir=self.base / party, name=name, role=role, **kw)


class EnrollTests(TCPTestCase):
    async def test_enroll_writes_verified_credentials(self) -> None:
        credentials = await self.enroll("server")
        party = self.base / "server"
        self.assertEqual(stat.S_IMODE(os.stat(party / "key.pem").st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(party).st_mode), 0o700)
        self.assertFalse((party / NEXT_KEY_FILE).exists())
        loaded = load_credentials(party)
        assert loaded is not None
        self.assertEqual(loaded.chain, credentials.chain)
        self.assertEqual(loaded.root, self.ca.root)
        PeerVerifier(loaded.root, Role.SERVER, expected_names=["bank.example"]).verify(loaded.chain)
        self.assertIsNone(load_credentials(self.base / "nobody"))

    async def test_pin_by_ca_file_and_rsa_client(self) -> None:
        pin = RootPin.from_ca_file(TTPPaths(self.ttp_dir).root)
        credentials = await self.enroll("client", "alice.example", Role.CLIENT, pin=pin, key_type=KeyType.RSA_2048)
        self.assertEqual(describe_key(credentials.key), "rsa-2048")
        PeerVerifier(self.ca.root, Role.CLIENT, expected_names=["alice.example"]).verify(credentials.chain)

    async def test_wrong_pin_is_unknown_ca_and_writes_nothing(self) -> None:
        other = init_ca(self.base / "other-ttp")
        with self.assertRaises(AlertError) as caught:
            await self.enroll("server", pin=RootPin.from_fingerprint(other.fingerprint))
        self.assertEqual(caught.exception.alert, Alert.unknown_ca)
        self.assertFalse((self.base / "server" / "cert.pem").exists())
        self.assertFalse((self.base / "server" / "key.pem").exists())

    async def test_refusal_is_typed_and_writes_nothing(self) -> None:
        with self.assertRaises(EnrollmentRefused) as caught:
            await self.enroll("server", token=self.token("other.example"))
        self.assertEqual(caught.exception.code, Refusal.name_mismatch)
        self.assertIn("name_mismatch", str(caught.exception))
        self.assertIsNone(load_credentials(self.base / "server"))

    async def test_already_enrolled_and_bad_token_text(self) -> None:
        await self.enroll("server")
        with self.assertRaises(AlreadyEnrolled):
            await self.enroll("server")
        with self.assertRaises(ValueError):
            await self.enroll("other", token="not-a-token")

    async def test_twenty_simultaneous_enrollments_with_one_token(self) -> None:
        token = self.token()
        attempts = [self.enroll(f"racer{i}", token=token) for i in range(20)]
        results = await DeferredList(attempts, consumeErrors=True)
        successes = [value for ok, value in results if ok]
        refusals = [value.value for ok, value in results if not ok]  # type: ignore[attr-defined]
        self.assertEqual(len(successes), 1)
        self.assertEqual(len(refusals), 19)
        self.assertTrue(all(isinstance(r, EnrollmentRefused) and r.code is Refusal.token_spent for r in refusals), refusals)
        store = Store.open(TTPPaths(self.ttp_dir).db)
        self.addCleanup(store.close)
        (record,) = store.list_certificates()
        self.assertEqual(record.serial, successes[0].leaf.serial_number)

    async def test_unreachable_and_silent_ttp(self) -> None:
        port = cast(Any, self.service.port).getHost().port
        await self.service.stopService()
        with self.assertRaises(TTPUnavailable):
            await enroll(reactor, f"tcp:host=127.0.0.1:port={port}", data_dir=self.base / "p", pin=self.pin,
                         token=self.token(), name="bank.example", role=Role.SERVER)
        silent = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(silent.stopListening)
        with self.assertRaises(TTPUnavailable) as caught:
            await fetch_crl(reactor, f"tcp:host=127.0.0.1:port={silent.getHost().port}", pin=self.pin, timeout=0.2)
        self.assertIn("no reply", str(caught.exception))


class RenewTests(TCPTestCase):
    async def test_renew_same_key_then_new_key(self) -> None:
        first = await self.enroll("server")
        party = self.base / "server"
        second = await renew(reactor, self.endpoint, data_dir=party)
        self.assertEqual(second.key.public_key().public_numbers(), first.key.public_key().public_numbers())
        self.assertNotEqual(second.leaf.serial_number, first.leaf.serial_number)
        third = await renew(reactor, self.endpoint, data_dir=party, new_key=True, key_type=KeyType.EC_P384)
        self.assertEqual(describe_key(third.key), "ec-p384")
        loaded = load_credentials(party)
        assert loaded is not None
        self.assertEqual(loaded.leaf, third.leaf)
        self.assertEqual(describe_key(loaded.key), "ec-p384")
        PeerVerifier(self.ca.root, Role.SERVER, expected_names=["bank.example"]).verify(loaded.chain)

    async def test_renew_refusals(self) -> None:
        with self.assertRaises(NotEnrolled):
            await renew(reactor, self.endpoint, data_dir=self.base / "nobody")
        first = await self.enroll("server")
        with self.assertRaises(ValueError):
            await renew(reactor, self.endpoint, data_dir=self.base / "server", key_type=KeyType.EC_P384)
        store = Store.open(TTPPaths(self.ttp_dir).db)
        store.revoke(first.leaf.serial_number, x509.ReasonFlags.key_compromise, now=first.leaf.not_valid_before_utc)
        store.close()
        with self.assertRaises(EnrollmentRefused) as caught:
            await renew(reactor, self.endpoint, data_dir=self.base / "server")
        self.assertEqual(caught.exception.code, Refusal.not_renewable)


class CRLTests(TCPTestCase):
    async def test_revocation_is_served_without_restart(self) -> None:
        credentials = await self.enroll("server")
        party = self.base / "server"
        before = await fetch_crl(reactor, self.endpoint, pin=self.pin, data_dir=party)
        self.assertEqual(len(before), 0)
        # 'tlsotp ttp revoke' works on the database while the daemon runs.
        store = Store.open(TTPPaths(self.ttp_dir).db)
        store.revoke(credentials.leaf.serial_number, x509.ReasonFlags.key_compromise, now=credentials.leaf.not_valid_before_utc)
        store.close()
        after = await fetch_crl(reactor, self.endpoint, pin=self.ca.root, data_dir=party)
        self.assertIsNotNone(after.get_revoked_certificate_by_serial_number(credentials.leaf.serial_number))
        self.assertEqual(pem.load_crl(party / "crl.pem"), after)
        with self.assertRaises(AlertError) as caught:
            PeerVerifier(self.ca.root, Role.SERVER, expected_names=["bank.example"], crl=after).verify(credentials.chain)
        self.assertEqual(caught.exception.alert, Alert.certificate_revoked)

    async def test_crl_from_another_root_is_refused(self) -> None:
        other = init_ca(self.base / "other-ttp")
        with self.assertRaises(AlertError) as caught:
            await fetch_crl(reactor, self.endpoint, pin=other.root)
        self.assertEqual(caught.exception.alert, Alert.unknown_ca)


class CredentialFileTests(unittest.TestCase):
    """A crash between writing cert.pem and renaming key.pem.next is finished on load."""

    async def test_interrupted_key_rename_is_rolled_forward(self) -> None:
        base = Path(self.mktemp())
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        _, endpoint = start_ttp(self, ttp_dir)
        party = base / "party"
        first = await enroll(reactor, endpoint, data_dir=party, pin=RootPin.from_fingerprint(ca.fingerprint),
                             token=str(mint_token(ttp_dir, "bank.example", Role.SERVER)), name="bank.example", role=Role.SERVER)
        # Simulate the crash: the new key and certificate written, the rename not done.
        from tlsotp.pki.builders import issue_certificate
        from tlsotp.pki.keys import generate_private_key

        new_key = generate_private_key(KeyType.EC_P256)
        new_leaf = issue_certificate(
            ca.key, ca.root, new_key.public_key(), name="bank.example", role=Role.SERVER, days=7, now=first.leaf.not_valid_before_utc
        )
        pem.write_private_key(party / NEXT_KEY_FILE, new_key)
        pem.write_certificates(party / "cert.pem", [new_leaf])
        loaded = load_credentials(party)
        assert loaded is not None
        self.assertEqual(loaded.leaf, new_leaf)
        self.assertFalse((party / NEXT_KEY_FILE).exists())
        # A key that belongs to no certificate is an error, never silently used.
        pem.write_private_key(party / "key.pem", generate_private_key(KeyType.EC_P256))
        with self.assertRaises(pem.PEMError):
            load_credentials(party)
        write_credentials(party, Credentials(new_key, [new_leaf], ca.root), new_key=True)
        self.assertIsNotNone(load_credentials(party))
