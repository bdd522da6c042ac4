"""The server does not read the process CPU clock per session (issue 12, from a profile of the
daemon under 50 concurrent sessions); the client, whose ``--trace`` prints it, still does."""

from __future__ import annotations

from twisted.trial import unittest

from tlsotp.services.bank_server import OTPServerProtocol
from tlsotp.services.channel import ChannelStats
from tlsotp.services.otp_client import OTPClientProtocol


class CPUClockTests(unittest.SynchronousTestCase):
    def test_only_the_client_times_its_handshake_cpu(self) -> None:
        self.assertFalse(OTPServerProtocol.measure_cpu)
        self.assertTrue(OTPClientProtocol.measure_cpu)
        server, client = ChannelStats(measure_cpu=False), ChannelStats()
        server.handshake_done()
        client.handshake_done()
        self.assertIsNone(server.handshake_cpu_seconds)
        self.assertIsNotNone(client.handshake_cpu_seconds)
        self.assertIsNotNone(server.handshake_seconds)
