"""The exhaustive byte-flip sweep: every byte of every frame of a whole OTP session, both
directions, every suite, flipped one at a time.

For each suite one good session runs frame by frame (handshake, OTPRequest, OTPGrant,
close_notify both ways). Before each frame is delivered, the whole session is snapshotted;
then, for every byte of that frame, a copy of the snapshot receives the frame with that byte
flipped and runs honestly to its end (``Session.finish``). Each flip must end the session with
an alert on the receiving side, without any side needing its timeout, and the client must
accept no OTP (``check_outcome`` also holds: the server is failed too, or had already sent its
grant and close_notify). The one exception is a frame that reaches a side that has already
ended: in a good session that is exactly the client's close_notify in reply to the server's,
which the server, closed after its own close_notify, never reads; there the session must
complete with the client holding the OTP the server issued.

The flip is XOR 0x01, the smallest change there is, chosen because it turns each value into
its neighbour: content type 22 (handshake) into 23 (application data) and 21 (alert) into 20,
every length off by one, version 1 into 0, and suite codes into real other suites (0x0103
AES-128 into 0x0102 ChaCha20, 0x2003 into 0x2002). ``TLSOTP_SWEEP=full`` also flips with 0x80
(the high bit: lengths far out of bounds, DER tags turned context-specific) and 0xFF, and
adds an RSA client certificate for every suite.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from cryptography.utils import CryptographyDeprecationWarning
from twisted.trial import unittest

from tests.otp_session import Session, StoreIssuer, check_outcome, snapshot, suite_configs
from tests.vectors.harness import key_type_for
from tlsotp.handshake import ALL_SUITES, Suite

FULL = os.environ.get("TLSOTP_SWEEP") == "full"
MASKS = (0x01, 0x80, 0xFF) if FULL else (0x01,)
CLIENT_KEYS = ("ec-p256", "rsa-2048") if FULL else ("ec-p256",)


def flipped(frame: bytes, index: int, mask: int) -> bytes:
    changed = bytearray(frame)
    changed[index] ^= mask
    return bytes(changed)


class ByteFlipSweep(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        path = Path(self.mktemp())
        path.mkdir()
        self.issuer = StoreIssuer(path / "otp.sqlite3")
        self.addCleanup(self.issuer.close)

    def sweep(self, suite: Suite, client_key: str) -> None:
        with warnings.catch_warnings():
            # A 0x80 flip can make a certificate's serial negative: cryptography warns (a later
            # release will refuse to parse it); the certificate is refused either way.
            warnings.filterwarnings("ignore", "Parsed a serial number", CryptographyDeprecationWarning)
            self._sweep(suite, client_key)

    def _sweep(self, suite: Suite, client_key: str) -> None:
        session = Session(*suite_configs(suite, server_key=key_type_for(suite), client_key=client_key), self.issuer)
        harmless: list[tuple[str, int]] = []
        step = 0
        while (direction := session.next_direction()) is not None:
            frame = session.queues[direction][0]
            receiver = session.server if direction == "c2s" else session.client
            before = snapshot(session)
            for index in range(len(frame)):
                for mask in MASKS:
                    where = (
                        f"{suite.name}, {client_key} client, frame {step} ({direction}, {len(frame)} bytes),"
                        f" byte {index} ^ 0x{mask:02x}"
                    )
                    attacked = snapshot(before)
                    attacked.queues[direction][0] = flipped(frame, index, mask)
                    attacked.finish()
                    outcome = check_outcome(attacked)
                    if receiver.ended:
                        self.assertEqual(outcome, "completed", where)
                        continue
                    self.assertEqual(outcome, "failed", where)
                    attacked_receiver = attacked.server if direction == "c2s" else attacked.client
                    self.assertTrue(attacked_receiver.alerted(), where)
                    self.assertFalse(attacked.client.timed_out or attacked.server.timed_out, where)
            if receiver.ended:
                harmless.append((direction, step))
            session.deliver(direction)
            step += 1
        session.finish()
        self.assertEqual(check_outcome(session), "completed")
        # The only frame that reaches a side already over is the client's closing close_notify.
        self.assertEqual(harmless, [("c2s", step - 1)], suite.name)


def _add_suite_tests() -> None:
    for suite in ALL_SUITES:
        for client_key in CLIENT_KEYS:
            def test(self: ByteFlipSweep, suite: Suite = suite, client_key: str = client_key) -> None:
                self.sweep(suite, client_key)

            name = f"test_{suite.name}" + ("" if client_key == "ec-p256" else f"_{client_key.replace('-', '_')}_client")
            test.__name__ = name
            test.__doc__ = f"Every byte of a whole {suite.name} session, flipped, is refused."
            setattr(ByteFlipSweep, name, test)


_add_suite_tests()
