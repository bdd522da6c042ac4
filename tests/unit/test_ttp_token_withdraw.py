"""``tlsotp ttp token --withdraw ID``, as issue 9 names it: the same withdrawal as
``tlsotp ttp withdraw ID``, end to end through a real TTP on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.trial import unittest

from tests.test_ttp_fixtures import start_ttp
from tests.unit.test_cli_ttp import run
from tlsotp.ttp.tokens import Token


class TokenWithdrawTests(unittest.TestCase):
    async def test_token_withdraw_refuses_the_enrollment_and_leaves_other_tokens(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        fp = (await run("ttp", "init", "--data-dir", ttp)).out.strip()
        leaked = (await run("ttp", "token", "--data-dir", ttp, "--name", "bank.example", "--role", "server")).out.strip()
        kept = (await run("ttp", "token", "--data-dir", ttp, "--name", "alice.example", "--role", "client")).out.strip()
        leaked_id = Token.parse(leaked).token_id

        withdrawn = await run("ttp", "token", "--data-dir", ttp, "--withdraw", leaked_id)
        self.assertEqual(withdrawn.code, 0, withdrawn)
        self.assertEqual(withdrawn.out, f"withdrew token {leaked_id} (bank.example, server); "
                                        "the TTP refuses it from now on (token_withdrawn)\n")
        outstanding = json.loads((await run("ttp", "tokens", "--data-dir", ttp, "--json")).out)["tokens"]
        self.assertEqual([token["id"] for token in outstanding], [Token.parse(kept).token_id])
        # Both spellings answer alike for a token already withdrawn (given whole this time).
        for argv, command in [(("token", "--withdraw", leaked), "tlsotp ttp token"), (("withdraw", leaked), "tlsotp ttp withdraw")]:
            again = await run("ttp", argv[0], "--data-dir", ttp, *argv[1:])
            self.assertEqual((again.code, again.err), (1, f"{command}: cannot withdraw token {leaked_id}: it was already withdrawn\n"))

        _, endpoint = start_ttp(self, Path(ttp))
        refused = await run("enroll", "--data-dir", str(base / "bank"), "--ttp", endpoint, "--ca-fingerprint", fp,
                            "--token", leaked, "--name", "bank.example", "--role", "server")
        self.assertEqual(refused.code, 1, refused)
        self.assertRegex(refused.err, r"^tlsotp enroll: the TTP refused: token_withdrawn: .*\n$")
        alice = await run("enroll", "--data-dir", str(base / "alice"), "--ttp", endpoint, "--ca-fingerprint", fp,
                          "--token", kept, "--name", "alice.example", "--role", "client")
        self.assertEqual(alice.code, 0, alice)
        spent = await run("ttp", "token", "--data-dir", ttp, "--withdraw", kept)
        self.assertEqual(spent.code, 1)
        self.assertIn("already used to enroll; revoke its certificate", spent.err)

    async def test_withdraw_with_a_name_or_role_is_a_usage_error(self) -> None:
        for extra in (("--name", "bank.example"), ("--role", "server")):
            mixed = await run("ttp", "token", "--data-dir", "d", "--withdraw", "abc", *extra)
            self.assertEqual(mixed.code, 2)
            self.assertIn("tlsotp ttp token: error: --withdraw takes the token id alone", mixed.err)
        empty = await run("ttp", "token", "--data-dir", "d", "--withdraw", " ")
        self.assertEqual(empty.code, 2)
        self.assertIn("is not a token id", empty.err)
