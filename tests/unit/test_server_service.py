"""The server service with a real in-process TTP: enrollment, renewal and CRL refresh while running."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tlsotp.commands import server_daemon
from tlsotp.commands.demo import mint, port_of
from tlsotp.commands.ttp_daemon import TTPService
from tlsotp.pki.keys import KeyType
from tlsotp.pki.pem import load_certificate
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow
from tlsotp.services.bank_service import BankServerService, build_service
from tlsotp.services.credentials import EXPIRED_CERT_FILE, StartupError, obtain_credentials
from tlsotp.services.enrollment import Credentials, RootPin, enroll
from tlsotp.ttp.ca import init_ca, open_store

WAIT_SECONDS = 15.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` on the running reactor, for a bounded time."""
    for _ in range(int(WAIT_SECONDS / 0.05)):
        if condition():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class ServerServiceTests(unittest.TestCase):
    async def start(self, *extra: str) -> BankServerService:
        self.workdir = Path(self.mktemp()).resolve()
        self.ttp_dir = self.workdir / "ttp"
        self.ca = init_ca(self.ttp_dir)
        ttp = TTPService(reactor, self.ca, self.ttp_dir, listen="tcp:0:interface=127.0.0.1")
        ttp.startService()
        self.addCleanup(ttp.stopService)
        self.ttp_endpoint = f"tcp:host=127.0.0.1:port={port_of(ttp.port)}"
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(self.workdir / "bank"), "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1",
            "--ttp", self.ttp_endpoint, "--ca-fingerprint", self.ca.fingerprint,
            "--token", mint(self.ttp_dir, "bank.example", Role.SERVER), *extra,
        ])
        server = build_service(server_daemon.settings_from(options), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        await server.ready
        return server

    async def test_renews_before_expiry(self) -> None:
        # Certificates live 7 days; renewing "within 30 days of expiry" means at the first check.
        server = await self.start("--renew-check", "0.1", "--renew-before", str(30 * 86400))
        assert server.factory is not None
        first = server.factory.identity.chain[0]
        await eventually(lambda: server.factory is not None and server.factory.identity.chain[0] != first, "renewal")
        renewed = server.factory.identity.chain[0]
        self.assertNotEqual(renewed.serial_number, first.serial_number)
        self.assertEqual(load_certificate(self.workdir / "bank" / "cert.pem"), renewed)
        self.assertGreaterEqual(renewed.not_valid_after_utc, first.not_valid_after_utc)
        self.assertNotEqual(renewed.public_key(), first.public_key())  # a new key at each renewal

    async def test_no_renewal_when_not_due(self) -> None:
        server = await self.start("--renew-check", "0.05")
        assert server.factory is not None
        first = server.factory.identity.chain[0]
        # A positive signal, not a pause: run the very check the loop runs, to its end, twice;
        # it finds the certificate far from expiry and leaves it in place.
        for _ in range(2):
            await server.renew_if_due()
            self.assertEqual(server.factory.identity.chain[0], first)
        self.assertEqual(load_certificate(self.workdir / "bank" / "cert.pem"), first)

    async def test_crl_refresh_sees_a_new_revocation(self) -> None:
        server = await self.start("--crl-refresh", "0.1")
        assert server.factory is not None and server.factory.crl is not None
        client = await enroll(
            reactor, self.ttp_endpoint, data_dir=self.workdir / "alice", pin=RootPin.from_certificate(self.ca.root),
            token=mint(self.ttp_dir, "alice.example", Role.CLIENT), name="alice.example", role=Role.CLIENT,
        )
        serial = client.chain[0].serial_number
        self.assertIsNone(server.factory.crl.get_revoked_certificate_by_serial_number(serial))
        store = open_store(self.ttp_dir)
        try:
            store.revoke(serial, x509.ReasonFlags.key_compromise, now=utcnow())
        finally:
            store.close()

        def revoked() -> bool:
            crl = server.factory.crl if server.factory else None
            return crl is not None and crl.get_revoked_certificate_by_serial_number(serial) is not None

        await eventually(revoked, "the refreshed CRL to list the revoked client")


class ReenrollmentTests(unittest.TestCase):
    async def test_expired_certificate_with_a_new_token_enrolls_afresh(self) -> None:
        workdir = Path(self.mktemp()).resolve()
        ttp_dir = workdir / "ttp"
        ca = init_ca(ttp_dir)
        ttp = TTPService(reactor, ca, ttp_dir, listen="tcp:0:interface=127.0.0.1")
        ttp.startService()
        self.addCleanup(ttp.stopService)
        endpoint = f"tcp:host=127.0.0.1:port={port_of(ttp.port)}"
        pin = RootPin.from_certificate(ca.root)
        data_dir = workdir / "bank"

        def obtain(token: str | None, now: datetime.datetime | None = None) -> Deferred[Credentials]:
            return Deferred.fromCoroutine(obtain_credentials(
                reactor, data_dir=data_dir, ttp=endpoint, pin=pin, token=token, name="bank.example",
                role=Role.SERVER, key_type=KeyType.EC_P256, timeout=10, now=now,
            ))

        first = await obtain(mint(ttp_dir, "bank.example", Role.SERVER))
        self.assertEqual((await obtain(None)).leaf, first.leaf)  # current: reused, no token needed
        later = first.leaf.not_valid_after_utc + datetime.timedelta(minutes=1)
        with self.assertRaises(StartupError) as caught:
            await obtain(None, now=later)
        self.assertIn("expired", str(caught.exception))
        second = await obtain(mint(ttp_dir, "bank.example", Role.SERVER), now=later)
        self.assertNotEqual(second.leaf.serial_number, first.leaf.serial_number)
        self.assertEqual(load_certificate(data_dir / EXPIRED_CERT_FILE), first.leaf)
        self.assertEqual(load_certificate(data_dir / "cert.pem"), second.leaf)
