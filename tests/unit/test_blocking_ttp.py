"""``BlockingTTP``: the bank server's TTP calls at start-up, before a reactor runs.

A plain socket server on a thread plays the TTP (a blocking client cannot talk to a server on
the reactor of the same thread); whatever it sends back ends in a reply or a typed error.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tlsotp.alerts import Alert, AlertError
from tlsotp.framing import encode
from tlsotp.services.ttp_client import BlockingTTP, TTPUnavailable
from tlsotp.ttp import wire

REFUSED = wire.Refused(wire.Refusal.unknown_token, "no such token")


class OneShotTTP:
    """Accepts connections on a thread; each gets the request read (one netstring) and
    ``reply`` sent, then is closed (or held open when ``reply`` is None)."""

    def __init__(self, testcase: SynchronousTestCase, family: int = socket.AF_INET, path: str | None = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(path if path else ("127.0.0.1", 0))
        self.sock.listen(8)
        self.reply: bytes | None = b""
        self.requests: list[bytes] = []
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        testcase.addCleanup(self.close)

    @property
    def endpoint(self) -> str:
        if self.sock.family == socket.AF_UNIX:
            return f"unix:path={self.sock.getsockname()}"
        return f"tcp:host=127.0.0.1:port={self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                received = b""
                try:
                    while not received.endswith(b","):
                        data = conn.recv(65536)
                        if not data:
                            break
                        received += data
                except OSError:
                    continue
                self.requests.append(received)
                if self.reply is None:
                    self.held.append(conn.dup())
                    continue
                try:
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class BlockingTTPTests(SynchronousTestCase):
    def test_a_reply_is_decoded_and_the_request_was_one_netstring(self) -> None:
        ttp = OneShotTTP(self)
        ttp.reply = encode(wire.encode(REFUSED))
        self.assertEqual(BlockingTTP(ttp.endpoint).exchange_now(wire.CRLRequest(), 5), REFUSED)
        self.assertEqual(ttp.requests, [encode(wire.encode(wire.CRLRequest()))])

    def test_the_exchange_deferred_has_fired_when_it_is_returned(self) -> None:
        ttp = OneShotTTP(self)
        ttp.reply = encode(wire.encode(REFUSED))
        self.assertEqual(self.successResultOf(BlockingTTP(ttp.endpoint).exchange(wire.CRLRequest(), 5)), REFUSED)
        ttp.reply = b""
        self.failureResultOf(BlockingTTP(ttp.endpoint).exchange(wire.CRLRequest(), 5), TTPUnavailable)

    def test_a_unix_endpoint(self) -> None:
        directory = tempfile.mkdtemp(prefix="ttp")  # short: a socket path has ~100 bytes at most
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "ttp.sock")
        ttp = OneShotTTP(self, socket.AF_UNIX, path)
        ttp.reply = encode(wire.encode(REFUSED))
        self.assertEqual(BlockingTTP(ttp.endpoint).exchange_now(wire.CRLRequest(), 5), REFUSED)

    def test_refused_connection(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.addCleanup(s.close)
        endpoint = f"tcp:host=127.0.0.1:port={s.getsockname()[1]}"
        with self.assertRaises(TTPUnavailable) as caught:
            BlockingTTP(endpoint).exchange_now(wire.CRLRequest(), 5)
        self.assertEqual(str(caught.exception), f"cannot connect to the TTP at {endpoint}: Connection refused")

    def test_a_silent_ttp_times_out_within_the_deadline(self) -> None:
        ttp = OneShotTTP(self)
        ttp.reply = None
        with self.assertRaises(TTPUnavailable) as caught:
            BlockingTTP(ttp.endpoint).exchange_now(wire.CRLRequest(), 0.2)
        self.assertEqual(str(caught.exception), f"no reply from the TTP at {ttp.endpoint} within 0.2 s")

    def test_closed_without_a_reply(self) -> None:
        ttp = OneShotTTP(self)
        with self.assertRaises(TTPUnavailable) as caught:
            BlockingTTP(ttp.endpoint).exchange_now(wire.CRLRequest(), 5)
        self.assertIn("closed the connection without replying", str(caught.exception))

    def test_bad_and_unsupported_endpoints_are_one_line(self) -> None:
        for description, text in (
            ("nonsense:1", "bad TTP endpoint 'nonsense:1'"),
            ("tcp:host=127.0.0.1:port=notaport", "bad TTP endpoint"),
            ("ssl:host=127.0.0.1:port=7000", "ssl:host=127.0.0.1:port=7000"),
        ):
            with self.assertRaises(TTPUnavailable) as caught:
                BlockingTTP(description)
            self.assertIn(text, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_the_endpoint_syntax_is_twisteds(self) -> None:
        self.assertEqual(BlockingTTP("tcp:127.0.0.1:7000").address, ("127.0.0.1", 7000))
        self.assertEqual(BlockingTTP(r"tcp:host=\:\:1:port=7000").address, ("::1", 7000))
        self.assertEqual(BlockingTTP("unix:/run/ttp.sock").address, "/run/ttp.sock")
        self.assertEqual(
            BlockingTTP("tcp:host=127.0.0.1:port=7000:bindAddress=127.0.0.2").bind_address, ("127.0.0.2", 0)
        )

    @given(st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(encode),
        st.sampled_from([b"99999999:", b"01:x,", b"3:abc;", b"0:,"]),
    ))
    def test_whatever_the_ttp_sends_is_a_reply_or_a_typed_error(self, reply: bytes) -> None:
        if not hasattr(self, "shared"):
            self.shared = OneShotTTP(self)
        ttp = self.shared
        ttp.reply = reply
        try:
            BlockingTTP(ttp.endpoint).exchange_now(wire.CRLRequest(), 5)
        except AlertError as exc:
            self.assertIn(exc.alert, (Alert.decode_error, Alert.illegal_parameter, Alert.unexpected_message))
        except TTPUnavailable:
            pass
