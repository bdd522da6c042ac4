"""A real man in the middle on the TTP link: a TCP proxy that reads, rewrites and replays frames.

He can neither obtain a certificate (the token proof binds the CSR) nor make the requester
trust another CA or a stale answer (every reply is checked against the pin and our own key).
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_ttp_fixtures import cached_key, csr_der, mint_token, reactor, start_ttp
from tlsotp.alerts import Alert, AlertError
from tlsotp.pki import pem
from tlsotp.pki.builders import build_crl, build_root, issue_certificate
from tlsotp.pki.credentials import NEXT_KEY_FILE, spki
from tlsotp.pki.keys import KeyType, describe_key
from tlsotp.pki.roles import Role
from tlsotp.services.enrollment import (
    Credentials,
    EnrollmentRefused,
    RootPin,
    TTPUnavailable,
    enroll,
    fetch_crl,
    load_credentials,
    renew,
)
from tlsotp.services.ttp_client import exchange
from tlsotp.ttp import wire
from tlsotp.ttp.ca import TTPPaths, init_ca
from tlsotp.ttp.store import Store
from tlsotp.ttp.wire import Refusal

DER = serialization.Encoding.DER
Rewrite = Callable[[bytes], bytes]


class _Backend(NetstringReceiver):
    MAX_LENGTH = 1 << 24

    def __init__(self, front: _Front) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.backend_ready(self)

    def stringReceived(self, string: bytes) -> None:
        self.front.proxy.replies.append(string)
        if self.front.proxy.drop_replies > 0:  # the TTP decided and replied; the requester never hears it
            self.front.proxy.drop_replies -= 1
            self.front.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.front.sendString(self.front.proxy.on_reply(string))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.front.transport.loseConnection()  # type: ignore[misc, union-attr]


class _Front(NetstringReceiver):
    MAX_LENGTH = 1 << 24

    def __init__(self, proxy: MITMProxy) -> None:
        self.proxy = proxy
        self.backend: _Backend | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        connectProtocol(clientFromString(reactor, self.proxy.backend), _Backend(self))

    def backend_ready(self, backend: _Backend) -> None:
        self.backend = backend
        for frame in self.pending:
            backend.sendString(frame)

    def stringReceived(self, string: bytes) -> None:
        self.proxy.requests.append(string)
        frame = self.proxy.on_request(string)
        if self.backend is None:
            self.pending.append(frame)
        else:
            self.backend.sendString(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.backend is not None:
            self.backend.transport.loseConnection()  # type: ignore[misc, union-attr]


class MITMProxy:
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.requests: list[bytes] = []
        self.replies: list[bytes] = []
        self.on_request: Rewrite = lambda frame: frame
        self.on_reply: Rewrite = lambda frame: frame
        self.drop_replies = 0  # cut the connection instead of passing on this many replies

    def start(self, testcase: unittest.TestCase) -> Deferred[str]:
        factory = Factory.forProtocol(lambda: _Front(self))  # type: ignore[arg-type, return-value]
        listening = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)

        def started(port: Any) -> str:
            testcase.addCleanup(port.stopListening)
            return f"tcp:host=127.0.0.1:port={port.getHost().port}"

        return listening.addCallback(started)


class MITMTestCase(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]  # trial awaits a coroutine setUp
        self.base = Path(self.mktemp())
        self.ttp_dir = self.base / "ttp"
        self.ca = init_ca(self.ttp_dir)
        self.pin = RootPin.from_fingerprint(self.ca.fingerprint)
        _, self.direct = start_ttp(self, self.ttp_dir)
        self.proxy = MITMProxy(self.direct)
        self.via_proxy = await self.proxy.start(self)
        # Mallory's own CA, key and names.
        self.mallory_key = cached_key(KeyType.EC_P256, "mallory")
        mallory_ca_key = cached_key(KeyType.EC_P256, "mallory-ca")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.mallory_root = build_root(mallory_ca_key, "tlsotp TTP root", days=30, now=now)
        self.mallory_ca_key = mallory_ca_key

    def token(self, name: str = "bank.example", role: Role = Role.SERVER) -> str:
        return str(mint_token(self.ttp_dir, name, role))

    def enroll(self, party: str, token: str, endpoint: str | None = None) -> Deferred[Credentials]:
        return enroll(reactor, endpoint or self.via_proxy, data_dir=self.base / party, pin=self.pin, token=token,
                      name="bank.example", role=Role.SERVER)

    def certificates_in_db(self) -> int:
        store = Store.open(TTPPaths(self.ttp_dir).db)
        try:
            return len(store.list_certificates())
        finally:
            store.close()


class EavesdropperTests(MITMTestCase):
    async def test_the_wire_carries_no_token_secret(self) -> None:
        token_text = self.token()
        await self.enroll("server", token_text)
        (request,) = self.proxy.requests
        from tlsotp.ttp.tokens import Token

        token = Token.parse(token_text)
        self.assertIn(token.token_id.encode(), request)
        for secret in (token.secret, token_text.split(".")[1].encode(), token.mac_key()):
            self.assertNotIn(secret, request)
            self.assertNotIn(secret, self.proxy.replies[0])


class CertificateTheftTests(MITMTestCase):
    async def test_swapped_csr_gets_no_certificate_and_spends_nothing(self) -> None:
        def swap_csr(frame: bytes) -> bytes:
            request = wire.decode_request(frame)
            assert isinstance(request, wire.EnrollRequest)
            stolen = wire.EnrollRequest(request.token_id, request.role, request.name, request.nonce,
                                        csr_der(self.mallory_key, request.name), request.proof)
            return wire.encode(stolen)

        self.proxy.on_request = swap_csr
        token = self.token()
        with self.assertRaises(EnrollmentRefused) as caught:
            await self.enroll("server", token)
        self.assertEqual(caught.exception.code, Refusal.bad_token_proof)
        self.assertEqual(self.certificates_in_db(), 0)
        # The honest requester, once off the tampered link, still gets its certificate.
        await self.enroll("server", token, self.direct)
        self.assertEqual(self.certificates_in_db(), 1)

    async def test_replayed_request_gets_nothing_new(self) -> None:
        """A replay is the same enrollment again: the certificate already issued (public), no other."""
        credentials = await self.enroll("server", self.token())
        replayed = wire.decode_request(self.proxy.requests[0])
        reply = await exchange(reactor, self.direct, replayed, timeout=10)
        assert isinstance(reply, wire.Issued), reply
        self.assertEqual(reply.cert_der, credentials.leaf.public_bytes(DER))
        self.assertEqual(self.certificates_in_db(), 1)

    async def test_replayed_renewal_gets_nothing_new(self) -> None:
        await self.enroll("server", self.token(), self.direct)
        renewed = await renew(reactor, self.via_proxy, data_dir=self.base / "server")
        replayed = wire.decode_request(self.proxy.requests[0])
        reply = await exchange(reactor, self.direct, replayed, timeout=10)
        assert isinstance(reply, wire.Issued), reply
        self.assertEqual(reply.cert_der, renewed.leaf.public_bytes(DER))
        self.assertEqual(self.certificates_in_db(), 2)


class LostReplyTests(MITMTestCase):
    """The connection is cut after the TTP committed and replied: re-running costs no token."""

    async def test_enrollment_retry_reuses_the_pending_key_and_gets_the_same_certificate(self) -> None:
        token = self.token()
        self.proxy.drop_replies = 1
        with self.assertRaises(TTPUnavailable):
            await self.enroll("server", token)
        party = self.base / "server"
        self.assertEqual(self.certificates_in_db(), 1)  # issued and committed, reply lost
        self.assertFalse((party / "cert.pem").exists())
        pending = party / NEXT_KEY_FILE
        self.assertEqual(stat.S_IMODE(os.stat(pending).st_mode), 0o600)
        pending_key = pem.load_private_key(pending)
        credentials = await self.enroll("server", token)
        self.assertEqual(self.certificates_in_db(), 1)
        self.assertEqual(spki(credentials.key.public_key()), spki(pending_key.public_key()))
        self.assertFalse(pending.exists())
        loaded = load_credentials(party)
        assert loaded is not None
        self.assertEqual(loaded.leaf, credentials.leaf)
        self.assertEqual(wire.decode_reply(self.proxy.replies[0]), wire.decode_reply(self.proxy.replies[1]))

    async def test_renewal_with_a_new_key_retried_without_the_flag_finishes_it(self) -> None:
        party = self.base / "server"
        first = await self.enroll("server", self.token(), self.direct)
        self.proxy.drop_replies = 1
        with self.assertRaises(TTPUnavailable):
            await renew(reactor, self.via_proxy, data_dir=party, new_key=True, key_type=KeyType.EC_P384)
        self.assertEqual(self.certificates_in_db(), 2)
        # Plain 'renew' (as the server daemon's renewal does) finishes the pending renewal:
        # certifying the old key instead would look like a second holder of it.
        renewed = await renew(reactor, self.via_proxy, data_dir=party)
        self.assertEqual(self.certificates_in_db(), 2)
        self.assertEqual(describe_key(renewed.key), "ec-p384")
        self.assertNotEqual(renewed.leaf.serial_number, first.leaf.serial_number)
        self.assertFalse((party / NEXT_KEY_FILE).exists())
        store = Store.open(TTPPaths(self.ttp_dir).db)
        self.addCleanup(store.close)
        self.assertEqual(store.revocations(), [])
        # A different key type while a key is pending is refused before anything is sent.
        self.proxy.drop_replies = 1
        with self.assertRaises(TTPUnavailable):
            await renew(reactor, self.via_proxy, data_dir=party, new_key=True)
        with self.assertRaises(ValueError):
            await renew(reactor, self.via_proxy, data_dir=party, new_key=True, key_type=KeyType.RSA_2048)

    async def test_a_daemon_that_lost_its_enrollment_reply_starts_on_the_next_try(self) -> None:
        from tlsotp.services.credentials import obtain_credentials

        token = self.token()
        party = self.base / "server"
        kw: dict[str, Any] = dict(data_dir=party, ttp=self.via_proxy, pin=self.pin, token=token, name="bank.example",
                                  role=Role.SERVER, key_type=KeyType.EC_P256, timeout=10)
        self.proxy.drop_replies = 1
        with self.assertRaises(TTPUnavailable):
            await obtain_credentials(reactor, **kw)
        credentials = await obtain_credentials(reactor, **kw)
        self.assertEqual(self.certificates_in_db(), 1)
        self.assertEqual(credentials.leaf, (await obtain_credentials(reactor, **kw)).leaf)


class ForgedReplyTests(MITMTestCase):
    def mallory_issues_for_the_requester(self, frame: bytes, request_frame: bytes, *, real_root: bool) -> bytes:
        request = wire.decode_request(request_frame)
        assert isinstance(request, wire.EnrollRequest)
        victim_key = x509.load_der_x509_csr(request.csr_der).public_key()
        leaf = issue_certificate(
            self.mallory_ca_key, self.mallory_root, victim_key, name=request.name, role=request.role, days=7,  # type: ignore[arg-type]
            now=datetime.datetime.now(datetime.timezone.utc),
        )
        root = self.ca.root if real_root else self.mallory_root
        return wire.encode(wire.Issued(root.public_bytes(DER), leaf.public_bytes(DER)))

    async def test_another_ca_is_not_trusted(self) -> None:
        for real_root in (False, True):
            self.proxy.on_reply = lambda frame: self.mallory_issues_for_the_requester(
                frame, self.proxy.requests[-1], real_root=real_root
            )
            with self.assertRaises(AlertError) as caught:
                await self.enroll(f"server-{real_root}", self.token())
            self.assertEqual(caught.exception.alert, Alert.unknown_ca)
            self.assertIsNone(load_credentials(self.base / f"server-{real_root}"))

    async def test_replayed_reply_for_another_key_is_refused(self) -> None:
        await self.enroll("first", self.token())
        old_reply = self.proxy.replies[0]
        self.proxy.on_reply = lambda frame: old_reply
        with self.assertRaises(AlertError) as caught:
            await self.enroll("second", self.token())
        self.assertEqual(caught.exception.alert, Alert.bad_certificate)
        self.assertIsNone(load_credentials(self.base / "second"))

    async def test_replayed_older_certificate_on_renewal_is_refused(self) -> None:
        await self.enroll("server", self.token())
        enrolled_reply = self.proxy.replies[0]
        self.proxy.on_reply = lambda frame: enrolled_reply
        with self.assertRaises(AlertError) as caught:
            await renew(reactor, self.via_proxy, data_dir=self.base / "server")
        self.assertEqual(caught.exception.alert, Alert.bad_certificate)

    async def test_wrong_reply_type_is_refused(self) -> None:
        self.proxy.on_reply = lambda frame: wire.encode(wire.CRLReply(self.mallory_root.public_bytes(DER), b"x"))
        with self.assertRaises(AlertError) as caught:
            await self.enroll("server", self.token())
        self.assertEqual(caught.exception.alert, Alert.unexpected_message)


class ForgedCRLTests(MITMTestCase):
    async def test_crl_of_another_ca(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        crl = build_crl(self.mallory_ca_key, self.mallory_root, [], now=now, next_update=datetime.timedelta(days=1), crl_number=99)
        self.proxy.on_reply = lambda frame: wire.encode(wire.CRLReply(self.mallory_root.public_bytes(DER), crl.public_bytes(DER)))
        with self.assertRaises(AlertError) as caught:
            await fetch_crl(reactor, self.via_proxy, pin=self.pin)
        self.assertEqual(caught.exception.alert, Alert.unknown_ca)
        # Mallory's CRL under the real root's name and bytes still fails the signature check.
        self.proxy.on_reply = lambda frame: wire.encode(wire.CRLReply(self.ca.root_der, crl.public_bytes(DER)))
        with self.assertRaises(AlertError) as caught:
            await fetch_crl(reactor, self.via_proxy, pin=self.pin)
        self.assertEqual(caught.exception.alert, Alert.certificate_unknown)

    async def test_rolled_back_crl_is_refused(self) -> None:
        credentials = await self.enroll("server", self.token(), self.direct)
        party = self.base / "server"
        await fetch_crl(reactor, self.via_proxy, pin=self.pin, data_dir=party)
        old_reply = self.proxy.replies[-1]
        store = Store.open(TTPPaths(self.ttp_dir).db)
        store.revoke(credentials.leaf.serial_number, x509.ReasonFlags.key_compromise, now=credentials.leaf.not_valid_before_utc)
        store.close()
        await fetch_crl(reactor, self.via_proxy, pin=self.pin, data_dir=party)
        self.proxy.on_reply = lambda frame: old_reply
        with self.assertRaises(AlertError) as caught:
            await fetch_crl(reactor, self.via_proxy, pin=self.pin, data_dir=party)
        self.assertEqual(caught.exception.alert, Alert.certificate_unknown)
        self.assertIn("older", caught.exception.detail)
