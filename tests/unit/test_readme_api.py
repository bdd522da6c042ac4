"""README.rst's "Python API" section runs as written.

Every ``.. code-block:: python`` of that section is executed, in order, in one namespace that
holds the names the README says it assumes (TTP, SERVER, CA_FINGERPRINT, TOKEN, DATA_DIR), with
a real TTP (``TTPService`` on loopback) and a real bank server (enrolled with that TTP over TCP)
behind them; then its ``main`` is awaited and what it printed is checked.
"""

from __future__ import annotations

import io
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from tests.client_loopback import poll
from tests.test_ttp_fixtures import make_ttp, mint_token, start_ttp
from tlsotp.pki.credentials import RootPin
from tlsotp.pki.roles import Role
from tlsotp.services.bank_server import OTPServerFactory, ServerIdentity
from tlsotp.services.enrollment import enroll, fetch_crl
from tlsotp.services.otp_authority import OTPAuthority, OTPPolicy

README = Path(__file__).resolve().parents[2] / "README.rst"


def section(text: str, title: str) -> str:
    """The body of the section ``title`` (underlined with '-'), up to the next heading."""
    match = re.search(rf"^{re.escape(title)}\n-{{{len(title)}}}\n(.*?)(?=^\S[^\n]*\n[-=]{{3,}}\n)", text, re.M | re.S)
    if match is None:
        raise AssertionError(f"README.rst has no section {title!r}")
    return match.group(1)


def python_blocks(body: str) -> list[str]:
    """The code of each ``.. code-block:: python`` directive (its indented lines, dedented)."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", body, re.M):
        blocks.append(textwrap.dedent(match.group(1)))
    return blocks


class ReadmeExtractionTests(unittest.SynchronousTestCase):
    def test_the_section_has_its_examples(self) -> None:
        blocks = python_blocks(section(README.read_text(encoding="utf-8"), "Python API"))
        self.assertGreaterEqual(len(blocks), 6)
        code = "\n".join(blocks)
        for name in ("enroll(", "fetch_crl(", "request_otp(", "confirm_otp(", ".cancel()", "PeerUnreachable", "async def main"):
            self.assertIn(name, code)


class ReadmeAPITests(unittest.TestCase):
    async def test_the_python_api_section_runs(self) -> None:
        base = Path(self.mktemp()).resolve()
        ttp_dir = base / "ttp"
        ca = make_ttp(ttp_dir)
        _, ttp = start_ttp(self, ttp_dir)

        # The bank server, enrolled with that TTP the way its daemon does, on a free port.
        pin = RootPin.from_fingerprint(ca.fingerprint)
        server_token = str(mint_token(ttp_dir, "bank.example", Role.SERVER))
        credentials = await enroll(
            reactor, ttp, data_dir=base / "bank", pin=pin, token=server_token, name="bank.example", role=Role.SERVER
        )
        crl = await fetch_crl(reactor, ttp, pin=pin)
        (base / "otp").mkdir()
        authority = OTPAuthority(reactor, base / "otp", OTPPolicy())  # type: ignore[arg-type]  # the global reactor provides IReactorFromThreads
        self.addCleanup(authority.close)
        await authority.open()
        factory = OTPServerFactory(ServerIdentity(credentials.key, credentials.chain, credentials.root), authority, crl=crl)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)

        namespace: dict[str, Any] = {
            "__name__": "readme_api",
            "TTP": ttp,
            "SERVER": f"tcp:host=127.0.0.1:port={port.getHost().port}",
            "CA_FINGERPRINT": ca.fingerprint,
            "TOKEN": str(mint_token(ttp_dir, "alice.example", Role.CLIENT)),
            "DATA_DIR": base / "alice",
        }
        for block in python_blocks(section(README.read_text(encoding="utf-8"), "Python API")):
            exec(compile(block, "README.rst (Python API)", "exec"), namespace)

        printed = io.StringIO()
        self.patch(sys, "stdout", printed)
        await namespace["main"](reactor)
        lines = printed.getvalue().splitlines()
        self.assertRegex(lines[0], r"^The OTP for transferring Rs 500 to Bob is \d{6}\.$")
        self.assertEqual(lines[1], "cancelled: the server issued nothing")
        self.assertRegex(lines[2], r"^cannot reach the bank \(cannot connect to tcp:host=127\.0\.0\.1:port=1: .+\)$")
        self.assertEqual(lines[3], "we refused the bank: bad_certificate")
        self.assertEqual(len(lines), 4, lines)
        self.assertTrue((base / "alice" / "cert.pem").exists())
        # Two sessions reached the server and were answered (the request, its confirmation).
        await poll(lambda: factory.open_connections == 0, "the server closed every connection")
        self.assertEqual(factory.sessions_completed, 2)
