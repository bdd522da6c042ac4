"""A real bank server on loopback for the client API's tests: the real ``OTPServerFactory``, a
real ``OTPAuthority`` over a SQLite file in a temporary directory, real TCP."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor, task
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from tests.credentials import Identity, test_ca
from tlsotp.handshake import DEFAULT_SUITES, suites_for_key
from tlsotp.pki.roles import Role
from tlsotp.services.bank_server import OTPServerFactory, OTPServerProtocol, ServerIdentity
from tlsotp.services.otp_authority import DATABASE_FILE, OTPAuthority, OTPPolicy
from tlsotp.services.otp_client import ClientSettings

TX = "Rs 1,00,000 to your friend's account"


async def poll(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms; fail after ``within`` seconds."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"not within {within:g} s: {what}")


class LoopbackServerCase(unittest.TestCase):
    """A real server listening on loopback; ``self.accepted`` holds every server-side protocol."""

    def setUp(self) -> None:
        self.ca = test_ca()
        self.server = self.ca.issue("bank.example", Role.SERVER)
        self.client = self.ca.issue("alice.example", Role.CLIENT)
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir()
        self.authority = OTPAuthority(reactor, self.data_dir, OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(self.authority.close)
        self.accepted: list[OTPServerProtocol] = []
        #: Called when the server has the client's first complete message (its ClientHello).
        self.on_client_hello: Callable[[], None] | None = None

    async def listen(self, identity: Identity | None = None, **kwargs: Any) -> int:
        """Open the store, listen on a free loopback port, return the port."""
        await self.authority.open()
        identity = identity or self.server
        suites = kwargs.pop("suites", suites_for_key(identity.certificate.public_key(), DEFAULT_SUITES))
        self.factory = OTPServerFactory(
            ServerIdentity(identity.key, identity.chain, identity.root), self.authority, suites=suites, **kwargs
        )
        build = self.factory.buildProtocol

        def recording(addr: object) -> OTPServerProtocol:
            protocol = build(addr)
            self.accepted.append(protocol)
            first_message_received = protocol.first_message_received

            def heard() -> None:
                if self.on_client_hello is not None:
                    self.on_client_hello()
                first_message_received()

            protocol.first_message_received = heard  # type: ignore[method-assign]
            return protocol

        self.factory.buildProtocol = recording  # type: ignore[method-assign]
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.factory)
        self.addCleanup(port.stopListening)
        self.port = port
        return int(port.getHost().port)

    def settings(self, identity: Identity | None = None, **kwargs: Any) -> ClientSettings:
        identity = identity or self.client
        kwargs.setdefault("server_name", "bank.example")
        kwargs.setdefault("crl", self.ca.crl())
        return ClientSettings(key=identity.key, chain=identity.chain, root=identity.root, **kwargs)

    def stored_otps(self, client: str = "alice.example") -> int:
        """OTPs the server's store holds for ``client``, read from its SQLite file."""
        with sqlite3.connect(self.data_dir / DATABASE_FILE) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM otps WHERE client = ?", (client,)).fetchone()
        return int(count)

    async def all_closed(self, sessions: int = 1) -> None:
        """Wait until the server accepted ``sessions`` connections and every one is closed."""
        await poll(
            lambda: len(self.accepted) >= sessions and self.factory.open_connections == 0,
            f"{sessions} connection(s) accepted and closed by the server",
        )
