"""Token management (issue 9): ``tlsotp ttp tokens`` lists the outstanding tokens, never their
secrets; ``tlsotp ttp withdraw`` withdraws an unspent one, which the Issuer then refuses with
``token_withdrawn``; a version 2 database gains ``withdrawn_at`` on open (schema version 3)."""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path

from twisted.trial import unittest

from tests.test_ttp_fixtures import TTPFixture, enroll_request, start_ttp
from tests.unit.test_cli_ttp import run
from tests.unit.test_ttp_issuer import IssuerTestCase
from tests.unit.test_ttp_lineage import SCHEMA_V1_AS_SHIPPED
from tlsotp.pki.roles import Role
from tlsotp.ttp import store as ttp_store
from tlsotp.ttp.ca import TTPPaths
from tlsotp.ttp.store import SCHEMA_VERSION, Store, TokenUnavailable
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal

TOKEN_FIELDS = {"id", "name", "role", "created", "expires"}


class WithdrawnTokenIssuerTests(IssuerTestCase):
    def test_a_withdrawn_token_is_refused_with_token_withdrawn(self) -> None:
        token = self.ttp.token("bank.example", Role.SERVER)
        self.ttp.store.withdraw_token(token.token_id, now=self.ttp.clock.now)
        refused = self.assertRefused(Refusal.token_withdrawn, enroll_request(token, "bank.example", Role.SERVER, self.key))
        self.assertIn("withdrawn", refused.detail)
        self.assertEqual(self.ttp.store.list_certificates(), [])
        # Without the token's secret, nobody learns it was withdrawn: the proof is checked first.
        forged = Token(token.token_id, b"\x00" * len(token.secret))
        self.assertRefused(Refusal.bad_token_proof, enroll_request(forged, "bank.example", Role.SERVER, self.key))

    def test_only_an_outstanding_token_can_be_withdrawn(self) -> None:
        now = self.ttp.clock.now
        spent = self.ttp.token("bank.example", Role.SERVER)
        self.issued(enroll_request(spent, "bank.example", Role.SERVER, self.key))
        expired = self.ttp.token("old.example", Role.CLIENT, ttl=datetime.timedelta(minutes=1))
        withdrawn = self.ttp.token("gone.example", Role.CLIENT)
        self.ttp.store.withdraw_token(withdrawn.token_id, now=now)
        later = now + datetime.timedelta(minutes=2)
        for token_id, reason in [(spent.token_id, "spent"), (expired.token_id, "expired"),
                                 (withdrawn.token_id, "withdrawn"), ("nosuchtoken", "unknown")]:
            with self.assertRaises(TokenUnavailable) as caught:
                self.ttp.store.withdraw_token(token_id, now=later)
            self.assertEqual(caught.exception.reason, reason)

    def test_outstanding_tokens_leave_out_spent_expired_and_withdrawn(self) -> None:
        now = self.ttp.clock.now
        kept = self.ttp.token("alice.example", Role.CLIENT)
        spent = self.ttp.token("bank.example", Role.SERVER)
        self.issued(enroll_request(spent, "bank.example", Role.SERVER, self.key))
        self.ttp.token("old.example", Role.CLIENT, ttl=datetime.timedelta(seconds=30))
        withdrawn = self.ttp.token("gone.example", Role.CLIENT)
        self.ttp.store.withdraw_token(withdrawn.token_id, now=now)
        outstanding = self.ttp.store.outstanding_tokens(now + datetime.timedelta(minutes=1))
        self.assertEqual([record.token_id for record in outstanding], [kept.token_id])


class MigrationToV3Tests(unittest.SynchronousTestCase):
    def test_a_v2_file_gains_withdrawn_at_and_keeps_its_tokens(self) -> None:
        self.assertEqual(SCHEMA_VERSION, 3)
        base = Path(self.mktemp())
        base.mkdir()
        path = base / "ttp.sqlite3"
        db = sqlite3.connect(path)
        db.executescript(SCHEMA_V1_AS_SHIPPED)
        db.executescript(ttp_store.SCHEMA_V2)  # version 2 as shipped: SCHEMA_V2 is unchanged
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
        now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
        db.execute(
            "INSERT INTO tokens (id, mac_key, name, role, created_at, expires_at) VALUES ('tokV2', x'01', 'alice.example', 'client', ?, ?)",
            (now, now + 3600),
        )
        db.commit()
        db.close()

        store = Store.open(path)
        self.addCleanup(store.close)
        self.assertEqual(store._meta("schema_version"), 3)
        record = store.get_token("tokV2")
        assert record is not None
        self.assertIsNone(record.withdrawn_at)
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        self.assertEqual([r.token_id for r in store.outstanding_tokens(moment)], ["tokV2"])
        withdrawn = store.withdraw_token("tokV2", now=moment)
        self.assertEqual(withdrawn.withdrawn_at, moment)
        self.assertEqual(store.outstanding_tokens(moment), [])
        with sqlite3.connect(path) as check:
            columns = [row[1] for row in check.execute("PRAGMA table_info(tokens)")]
        self.assertIn("withdrawn_at", columns)

    def test_a_new_file_has_the_same_tokens_table_as_a_migrated_one(self) -> None:
        fixture = TTPFixture(Path(self.mktemp()))
        self.addCleanup(fixture.close)
        with sqlite3.connect(TTPPaths(fixture.data_dir).db) as check:
            columns = [row[1] for row in check.execute("PRAGMA table_info(tokens)")]
        self.assertEqual(columns[-1], "withdrawn_at")


class TokenCommandTests(unittest.TestCase):
    async def test_tokens_lists_without_secrets_and_withdraw_refuses_enrollment(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        fp = (await run("ttp", "init", "--data-dir", ttp)).out.strip()
        empty = await run("ttp", "tokens", "--data-dir", ttp, "--json")
        self.assertEqual((empty.code, json.loads(empty.out)), (0, {"tokens": []}))

        minted = {}
        for name, role in (("bank.example", "server"), ("alice.example", "client")):
            minted[name] = (await run("ttp", "token", "--data-dir", ttp, "--name", name, "--role", role, "--ttl", "2h")).out.strip()
        table = await run("ttp", "tokens", "--data-dir", ttp)
        self.assertEqual(table.code, 0, table)
        lines = table.out.splitlines()
        self.assertEqual(lines[0].split(), ["TOKEN", "ID", "NAME", "ROLE", "CREATED", "EXPIRES"])
        self.assertEqual(len(lines), 3)
        store = Store.open(TTPPaths(Path(ttp)).db)
        self.addCleanup(store.close)
        listing = await run("ttp", "tokens", "--data-dir", ttp, "--json")
        self.assertEqual(listing.code, 0, listing)
        document = json.loads(listing.out)
        self.assertEqual(list(document), ["tokens"])
        by_name = {token["name"]: token for token in document["tokens"]}
        self.assertEqual(set(by_name), set(minted))
        for name, text in minted.items():
            token = Token.parse(text)
            self.assertEqual(set(by_name[name]), TOKEN_FIELDS)
            self.assertEqual(by_name[name]["id"], token.token_id)
            created = datetime.datetime.fromisoformat(by_name[name]["created"])
            self.assertEqual(datetime.datetime.fromisoformat(by_name[name]["expires"]) - created, datetime.timedelta(hours=2))
            record = store.get_token(token.token_id)
            assert record is not None
            for output in (table.out, listing.out):  # never the secret nor the MAC key, in any spelling
                self.assertNotIn(text, output)
                self.assertNotIn(text.split(".", 1)[1], output)
                self.assertNotIn(record.mac_key.hex(), output)
        self.assertEqual(by_name["bank.example"]["role"], "server")

        # Withdraw the bank's token, given whole as a leaked one is found.
        withdrawn = await run("ttp", "withdraw", "--data-dir", ttp, minted["bank.example"])
        self.assertEqual(withdrawn.code, 0, withdrawn)
        bank_id = Token.parse(minted["bank.example"]).token_id
        self.assertIn(f"withdrew token {bank_id} (bank.example, server)", withdrawn.out)
        after = json.loads((await run("ttp", "tokens", "--data-dir", ttp, "--json")).out)
        self.assertEqual([token["name"] for token in after["tokens"]], ["alice.example"])
        again = await run("ttp", "withdraw", "--data-dir", ttp, bank_id)
        self.assertEqual(again.code, 1)
        self.assertEqual(again.err, f"tlsotp ttp withdraw: cannot withdraw token {bank_id}: it was already withdrawn\n")
        unknown = await run("ttp", "withdraw", "--data-dir", ttp, "nosuchtoken")
        self.assertEqual((unknown.code, unknown.err), (1, "tlsotp ttp withdraw: cannot withdraw token nosuchtoken: no such token\n"))
        missing = await run("ttp", "withdraw", "--data-dir", ttp)
        self.assertEqual(missing.code, 2)
        self.assertIn("give the id of the token", missing.err)

        # Through a real TTP on loopback: enrolling with the withdrawn token is a typed refusal.
        _, endpoint = start_ttp(self, Path(ttp))
        enroll = await run("enroll", "--data-dir", str(base / "bank"), "--ttp", endpoint, "--ca-fingerprint", fp,
                           "--token", minted["bank.example"], "--name", "bank.example", "--role", "server")
        self.assertEqual(enroll.code, 1, enroll)
        self.assertRegex(enroll.err, r"^tlsotp enroll: the TTP refused: token_withdrawn: .*\n$")
        # The other token still enrolls; once spent it cannot be withdrawn.
        alice = await run("enroll", "--data-dir", str(base / "alice"), "--ttp", endpoint, "--ca-fingerprint", fp,
                          "--token", minted["alice.example"], "--name", "alice.example", "--role", "client")
        self.assertEqual(alice.code, 0, alice)
        spent = await run("ttp", "withdraw", "--data-dir", ttp, Token.parse(minted["alice.example"]).token_id)
        self.assertEqual(spent.code, 1)
        self.assertIn("already used to enroll; revoke its certificate", spent.err)
