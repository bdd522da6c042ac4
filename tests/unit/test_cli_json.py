"""``tlsotp ttp list --json``: one JSON document on stdout, with every certificate's fields (issue 9,
machine-readable output)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from twisted.trial import unittest

from tests.test_ttp_fixtures import start_ttp
from tests.unit.test_cli_ttp import run
from tlsotp.ttp.tokens import Token

CERTIFICATE_FIELDS = {
    "serial", "name", "role", "enrollment", "not_before", "not_after", "issued_at", "renewed_from",
    "superseded_by", "revoked_at", "revocation_reason", "status",
}


class ListJSONTests(unittest.TestCase):
    async def test_list_json_has_every_certificate_and_field(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        fp = (await run("ttp", "init", "--data-dir", ttp)).out.strip()
        empty = await run("ttp", "list", "--data-dir", ttp, "--json")
        self.assertEqual((empty.code, json.loads(empty.out)), (0, {"certificates": []}))

        _, endpoint = start_ttp(self, Path(ttp))
        token = (await run("ttp", "token", "--data-dir", ttp, "--name", "bank.example", "--role", "server")).out.strip()
        party = str(base / "bank")
        enrolled = await run("enroll", "--data-dir", party, "--ttp", endpoint, "--ca-fingerprint", fp, "--token", token,
                             "--name", "bank.example", "--role", "server")
        self.assertEqual(enrolled.code, 0, enrolled)
        renewed = await run("renew", "--data-dir", party, "--ttp", endpoint)
        self.assertEqual(renewed.code, 0, renewed)
        table = (await run("ttp", "list", "--data-dir", ttp)).out.splitlines()
        current = next(line.split()[0] for line in table[1:] if line.endswith("valid"))
        self.assertEqual((await run("ttp", "revoke", "--data-dir", ttp, current, "--reason", "key-compromise")).code, 0)

        listing = await run("ttp", "list", "--data-dir", ttp, "--json")
        self.assertEqual((listing.code, listing.err), (0, ""))
        document = json.loads(listing.out)
        self.assertEqual(list(document), ["certificates"])
        certificates = document["certificates"]
        self.assertEqual(len(certificates), 2)
        for certificate in certificates:
            self.assertEqual(set(certificate), CERTIFICATE_FIELDS)
            self.assertEqual((certificate["name"], certificate["role"]), ("bank.example", "server"))
            self.assertEqual(certificate["enrollment"], Token.parse(token).token_id)
            for field in ("not_before", "not_after", "issued_at"):
                self.assertEqual(datetime.datetime.fromisoformat(certificate[field]).utcoffset(), datetime.timedelta(0))
        by_serial = {certificate["serial"]: certificate for certificate in certificates}
        self.assertEqual(by_serial[current]["revocation_reason"], "key_compromise")
        self.assertTrue(by_serial[current]["status"].startswith("revoked"))
        self.assertIsNotNone(by_serial[current]["revoked_at"])
        (first,) = (serial for serial in by_serial if serial != current)
        self.assertEqual((by_serial[current]["renewed_from"], by_serial[first]["superseded_by"]), (first, current))
