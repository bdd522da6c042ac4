"""``--json`` on ``tlsotp client`` and ``tlsotp crl`` (issue 9, machine-readable output): one
JSON document on stdout and nothing else there; a failure is still one line on stderr with exit
status 1, and stdout then holds a JSON error document; ``--json`` with ``--trace`` is a usage
error."""

from __future__ import annotations

import datetime
import io
import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.client_loopback import TX, LoopbackServerCase
from tests.test_ttp_fixtures import start_ttp
from tests.unit.test_cli_ttp import run
from tlsotp.commands.client import ClientCommandOptions
from tlsotp.commands.common import UsageFailure
from tlsotp.commands.main import parse
from tlsotp.pki.credentials import Credentials, write_credentials

COSTS = {"bytes_sent", "bytes_received", "frames_sent", "frames_received", "round_trips", "handshake_ms",
         "handshake_cpu_ms", "session_ms"}


class ClientJSONTests(LoopbackServerCase):
    async def run_client(self, port: int, *args: str) -> tuple[int, Any, str]:
        data_dir = Path(self.mktemp())
        identity = self.client
        write_credentials(data_dir, Credentials(identity.key, list(identity.chain), identity.root), new_key=True)
        options = parse([
            "client", "--data-dir", str(data_dir), "--no-crl-check", "--server", f"tcp:host=127.0.0.1:port={port}",
            "--server-name", "bank.example", "--json", *args,
        ])
        self.assertIsInstance(options, ClientCommandOptions)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", io.StringIO())  # the --no-crl-check warning
        code = await options.run(reactor, out, err)
        return code, json.loads(out.getvalue()), err.getvalue()

    async def test_an_otp_and_its_confirmation_as_json(self) -> None:
        port = await self.listen()
        code, document, err = await self.run_client(port, "--transaction", TX)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(set(document), {"transaction", "ok", "otp", "suite", "crl_checked", "costs"})
        self.assertEqual((document["transaction"], document["ok"], document["crl_checked"]), (TX, True, False))
        otp = document["otp"]
        self.assertIn(otp["code"], otp["message"])
        self.assertGreater(datetime.datetime.fromisoformat(otp["expires"]), datetime.datetime.now(datetime.timezone.utc))
        self.assertTrue(document["suite"].startswith("TLSOTP_"))
        costs = document["costs"]
        self.assertEqual(set(costs), COSTS)
        self.assertGreater(costs["bytes_sent"], 0)
        self.assertGreater(costs["bytes_received"], costs["frames_received"])
        self.assertGreaterEqual(costs["round_trips"], 2)
        self.assertGreaterEqual(costs["session_ms"], costs["handshake_ms"])

        wrong = "0" * len(otp["code"]) if otp["code"] != "0" * len(otp["code"]) else "1" * len(otp["code"])
        code, refused, err = await self.run_client(port, "--transaction", TX, "--confirm", wrong)
        self.assertEqual(code, 1)
        self.assertFalse(refused["ok"])
        self.assertEqual(refused["confirmation"], {"status": "wrong_code", "attempts_left": 2})
        self.assertEqual(err, f"tlsotp client: OTP refused for {TX}: wrong code (2 attempts left)\n")
        code, accepted, err = await self.run_client(port, "--transaction", TX, "--confirm", otp["code"])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(accepted["confirmation"]["status"], "accepted")
        self.assertNotIn("otp", accepted)

    async def test_a_refusal_is_a_json_error_document_and_the_same_line(self) -> None:
        port = await self.listen(allowed_clients=["bob.example"])
        code, document, err = await self.run_client(port)
        self.assertEqual(code, 1)
        self.assertEqual(err, "tlsotp client: bad_certificate: the server refused the session\n")
        self.assertEqual(document, {"error": {
            "command": "tlsotp client", "message": "bad_certificate: the server refused the session",
            "kind": "refused_by_server", "alert": "bad_certificate",
        }})
        code, mine, _ = await self.run_client(port, "--server-name", "other.example")
        self.assertEqual((code, mine["error"]["kind"], mine["error"]["alert"]), (1, "refused_by_client", "bad_certificate"))

    async def test_unreachable_as_json(self) -> None:
        port = await self.listen()
        await self.port.stopListening()
        code, document, err = await self.run_client(port)
        self.assertEqual(code, 1)
        self.assertEqual((document["error"]["kind"], document["error"]["alert"]), ("unreachable", None))
        self.assertEqual(f"tlsotp client: {document['error']['message']}\n", err)

    def test_json_and_trace_are_exclusive(self) -> None:
        with self.assertRaises(UsageFailure) as caught:
            parse(["client", "--data-dir", "d", "--server-name", "bank.example", "--json", "--trace"])
        self.assertIn("give --trace or --json, not both", str(caught.exception))


class CRLJSONTests(unittest.TestCase):
    async def test_crl_json_matches_the_text_and_errors_are_json_too(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        fp = (await run("ttp", "init", "--data-dir", ttp)).out.strip()
        _, endpoint = start_ttp(self, Path(ttp))
        token = (await run("ttp", "token", "--data-dir", ttp, "--name", "bank.example", "--role", "server")).out.strip()
        enrolled = await run("enroll", "--data-dir", str(base / "bank"), "--ttp", endpoint, "--ca-fingerprint", fp,
                             "--token", token, "--name", "bank.example", "--role", "server")
        self.assertEqual(enrolled.code, 0, enrolled)
        serial = json.loads((await run("ttp", "list", "--data-dir", ttp, "--json")).out)["certificates"][0]["serial"]
        self.assertEqual((await run("ttp", "revoke", "--data-dir", ttp, serial, "--reason", "key-compromise")).code, 0)

        text = await run("crl", "--ttp", endpoint, "--ca-fingerprint", fp)
        listing = await run("crl", "--ttp", endpoint, "--ca-fingerprint", fp, "--json")
        self.assertEqual((listing.code, listing.err), (0, ""))
        document = json.loads(listing.out)
        crl = document["crl"]
        self.assertEqual(set(crl), {"number", "issuer", "last_update", "next_update", "revoked"})
        self.assertIn(f"# CRL number {crl['number']}, ", text.out)
        (entry,) = crl["revoked"]
        self.assertEqual((entry["serial"], entry["reason"]), (serial, "key_compromise"))
        self.assertIn(f"{serial}  ", text.out)
        self.assertLess(datetime.datetime.fromisoformat(crl["last_update"]),
                        datetime.datetime.fromisoformat(crl["next_update"]))

        closed = await run("crl", "--ttp", "tcp:host=127.0.0.1:port=1", "--ca-fingerprint", fp, "--json", "--timeout", "5s")
        self.assertEqual(closed.code, 1)
        error = json.loads(closed.out)["error"]
        self.assertEqual(error["command"], "tlsotp crl")
        self.assertEqual(closed.err, f"tlsotp crl: {error['message']}\n")
