"""Every refusal code from a running TTP over loopback TCP, and the daemon still serving after."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_ttp_fixtures import cached_key, csr_der, enroll_request, mint_token, reactor, start_ttp
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.ttp_client import exchange
from tlsotp.ttp import wire
from tlsotp.ttp.ca import init_ca
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal


class _RawClient(Protocol):
    """Sends raw bytes and collects everything until the TTP closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)  # type: ignore[call-arg, union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(self.received)


class TCPRefusalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.ttp_dir = self.base / "ttp"
        init_ca(self.ttp_dir)
        self.service, self.endpoint = start_ttp(self, self.ttp_dir, timeout=0.5)
        self.key = cached_key(KeyType.EC_P256, "tcp-refusals")

    async def raw(self, data: bytes) -> wire.Refused:
        client = _RawClient(data)
        await connectProtocol(clientFromString(reactor, self.endpoint), client)
        received = await client.closed.addTimeout(10, reactor)
        length, _, rest = received.partition(b":")
        self.assertEqual(rest[int(length):], b",")
        reply = wire.decode_reply(rest[: int(length)])
        assert isinstance(reply, wire.Refused), reply
        return reply

    async def assertRefused(self, code: Refusal, request: wire.Request) -> None:
        reply = await exchange(reactor, self.endpoint, request, timeout=10)
        assert isinstance(reply, wire.Refused), reply
        self.assertEqual(reply.code, code, reply.detail)

    async def test_framing_refusals(self) -> None:
        self.assertEqual((await self.raw(b"hello")).code, Refusal.decode_error)
        self.assertEqual((await self.raw(b"3:abcX")).code, Refusal.decode_error)
        self.assertEqual((await self.raw(str(wire.MAX_REQUEST_LENGTH + 1).encode() + b":")).code, Refusal.too_long)
        self.assertEqual((await self.raw(b"1:\x09,")).code, Refusal.unknown_message)
        self.assertEqual((await self.raw(b"2:\x01\x00,")).code, Refusal.decode_error)
        self.assertEqual((await self.raw(b"")).code, Refusal.timeout)
        self.assertEqual((await self.raw(b"100:partial")).code, Refusal.timeout)
        await self.still_serving()

    async def test_decision_refusals(self) -> None:
        name, role = "bank.example", Role.SERVER
        token = mint_token(self.ttp_dir, name, role)
        await self.assertRefused(Refusal.unknown_token, enroll_request(Token.generate(), name, role, self.key))
        await self.assertRefused(Refusal.bad_csr, enroll_request(token, name, role, self.key, csr=b"junk"))
        tampered = bytearray(csr_der(self.key, name))
        tampered[-3] ^= 1
        await self.assertRefused(Refusal.bad_signature, enroll_request(token, name, role, self.key, csr=bytes(tampered)))
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        await self.assertRefused(Refusal.weak_key, enroll_request(token, name, role, weak))
        await self.assertRefused(Refusal.weak_key, enroll_request(token, name, role, ec.generate_private_key(ec.SECP521R1())))
        await self.assertRefused(Refusal.name_mismatch, enroll_request(token, "other.example", role, self.key))
        await self.assertRefused(Refusal.name_mismatch, enroll_request(token, name, role, self.key, csr=csr_der(self.key, "evil.example")))
        await self.assertRefused(Refusal.role_mismatch, enroll_request(token, name, Role.CLIENT, self.key))
        request = enroll_request(token, name, role, self.key)
        await self.assertRefused(
            Refusal.bad_token_proof,
            wire.EnrollRequest(request.token_id, request.role, request.name, request.nonce, request.csr_der, bytes(32)),
        )
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
        expired = mint_token(self.ttp_dir, name, role, now=past)
        await self.assertRefused(Refusal.token_expired, enroll_request(expired, name, role, self.key))

        issued = await exchange(reactor, self.endpoint, enroll_request(token, name, role, self.key), timeout=10)
        assert isinstance(issued, wire.Issued)
        # The same key again is the same enrollment (its reply lost); another key finds the token spent.
        again = await exchange(reactor, self.endpoint, enroll_request(token, name, role, self.key), timeout=10)
        self.assertEqual(again, issued)
        other = cached_key(KeyType.EC_P256, "tcp-refusals-other")
        await self.assertRefused(Refusal.token_spent, enroll_request(token, name, role, other))

        csr = csr_der(self.key, name)
        nonce = bytes(32)
        stale = int(past.timestamp())
        await self.assertRefused(
            Refusal.bad_timestamp,
            wire.RenewRequest(issued.cert_der, csr, nonce, stale, sign_renewal(self.key, issued.cert_der, csr, nonce, stale)),
        )
        await self.assertRefused(Refusal.bad_signature, wire.RenewRequest(issued.cert_der, csr, nonce, stale, b"sig"))
        await self.assertRefused(Refusal.not_renewable, wire.RenewRequest(b"not a certificate", csr, nonce, stale, b"sig"))
        await self.still_serving()

    async def still_serving(self) -> None:
        reply = await exchange(reactor, self.endpoint, wire.CRLRequest(), timeout=10)
        self.assertIsInstance(reply, wire.CRLReply)
