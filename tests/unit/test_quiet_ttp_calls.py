"""A requester's call to the TTP logs no "Starting factory" / "Stopping factory" pair (issue 12).

Over real loopback TCP, with a global twisted.logger observer: a CRL fetch leaves no factory
line, while the same capture does see Twisted's line for a default (noisy) one-shot factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.test_ttp_fixtures import reactor, start_ttp
from tlsotp.services.enrollment import fetch_crl
from tlsotp.ttp.ca import init_ca


class QuietTTPCallTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        self.ca = init_ca(base / "ttp")
        self.service, self.endpoint = start_ttp(self, base / "ttp")
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def factory_lines(self) -> list[str]:
        texts = [formatEvent(event) for event in self.events]
        return [t for t in texts if "Starting factory" in t or "Stopping factory" in t]

    async def test_a_crl_fetch_logs_no_factory_lines(self) -> None:
        for _ in range(2):
            crl = await fetch_crl(reactor, self.endpoint, pin=self.ca.root)
            self.assertEqual(crl.issuer, self.ca.root.subject)
        self.assertEqual(self.factory_lines(), [])

    async def test_the_capture_sees_a_noisy_factory(self) -> None:
        # The control: Twisted's own connectProtocol factory is noisy, and this capture sees it.
        protocol = await connectProtocol(clientFromString(reactor, self.endpoint), Protocol())
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        self.assertTrue(any("Starting factory" in line for line in self.factory_lines()), self.factory_lines())
