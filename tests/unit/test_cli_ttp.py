"""The ``tlsotp`` command for the TTP's operator and for a party: exit codes and one-line messages.

Most tests run a command's ``run(reactor, out, err)`` in-process against a TTP on loopback; a
few more (``tests/process/test_cli_ttp_subprocess.py``) run ``python -m tlsotp.commands.main`` as a subprocess.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from twisted.trial import unittest

from tests.test_ttp_fixtures import reactor, start_ttp
from tlsotp.commands import common
from tlsotp.commands import main as cli
from tlsotp.pki import pem
from tlsotp.pki.fingerprint import fingerprint
from tlsotp.ttp.ca import TTPPaths
from tlsotp.ttp.store import Store
from tlsotp.ttp.tokens import Token

TOKEN_LINE = re.compile(r"^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\n$")


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Ran({self.code}, out={self.out!r}, err={self.err!r})"


async def run(*argv: str) -> Ran:
    """Parse and run one command in-process, as main() would, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    try:
        command = cli.parse(argv)
    except common.UsageFailure as exc:
        return Ran(common.EXIT_USAGE, "", f"{exc}\n")
    code = await command.run(reactor, out, err)
    return Ran(code, out.getvalue(), err.getvalue())


class ParseTests(unittest.SynchronousTestCase):
    def assertUsage(self, argv: list[str], command: str, message: str) -> None:
        with self.assertRaises(common.UsageFailure) as caught:
            cli.parse(argv)
        self.assertEqual(caught.exception.command, command)
        self.assertIn(message, caught.exception.message)
        self.assertNotIn("\n", str(caught.exception))

    def test_usage_errors_name_the_command(self) -> None:
        self.assertUsage([], "tlsotp", "choose a command")
        self.assertUsage(["frobnicate"], "tlsotp", "frobnicate")
        self.assertUsage(["ttp"], "tlsotp ttp", "choose a command: init, token, revoke, list, tokens, withdraw, backup")
        self.assertUsage(["ttp", "token", "--data-dir", "d"], "tlsotp ttp token", "--name and --role are required")
        self.assertUsage(["ttp", "token", "--data-dir", "d", "--name", "x", "--role", "admin"], "tlsotp ttp token", "role must be")
        self.assertUsage(["ttp", "token", "--data-dir", "d", "--name", "*.x", "--role", "server"], "tlsotp ttp token", "DNS host name")
        self.assertUsage(
            ["ttp", "token", "--data-dir", "d", "--name", "x", "--role", "server", "--ttl", "90d"], "tlsotp ttp token", "at most 30 days"
        )
        self.assertUsage(["ttp", "init", "--data-dir", "d", "--key-type", "rsa-1024"], "tlsotp ttp init", "unknown key type")
        self.assertUsage(["ttp", "revoke", "--data-dir", "d"], "tlsotp ttp revoke", "give the serial")
        self.assertUsage(["ttp", "revoke", "--data-dir", "d", "abc", "--reason", "bored"], "tlsotp ttp revoke", "unknown reason")
        self.assertUsage(
            ["enroll", "--data-dir", "d", "--name", "x", "--role", "client", "--token", "t"], "tlsotp enroll", "pin the TTP root"
        )
        self.assertUsage(
            ["enroll", "--data-dir", "d", "--name", "x", "--role", "client", "--token", "t", "--ca-fingerprint", "sha1:00"],
            "tlsotp enroll", "sha256:",
        )
        self.assertUsage(["renew", "--data-dir", "d", "--key-type", "ec-p384"], "tlsotp renew", "--key-type needs --new-key")
        self.assertUsage(["crl"], "tlsotp crl", "pin the TTP root")

    def test_options_may_follow_positional_arguments(self) -> None:
        command = cli.parse(["ttp", "revoke", "--data-dir", "d", "0A:BC", "--reason", "key-compromise"])
        self.assertEqual(command["serial"], 0xABC)
        self.assertEqual(command["reason"].name, "key_compromise")
        self.assertEqual(
            common.options_first(["x", "-d", "dir", "--flag", "--opt=v", "--", "-y"], ["opt=", "flag"], "d:"),
            ["-d", "dir", "--flag", "--opt=v", "--", "x", "-y"],
        )

    def test_every_registered_subcommand_loads(self) -> None:
        for sub in cli.SUBCOMMANDS:
            options = sub.load()()
            self.assertTrue(callable(getattr(options, "run", None)) or isinstance(options, common.CommandGroup), sub.name)


class OperatorCommandTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.ttp = str(self.base / "ttp")

    async def test_init_token_list_revoke(self) -> None:
        init = await run("ttp", "init", "--data-dir", self.ttp)
        self.assertEqual(init.code, 0, init)
        self.assertEqual(init.out, fingerprint(pem.load_certificate(Path(self.ttp) / "ca.pem")) + "\n")
        again = await run("ttp", "init", "--data-dir", self.ttp)
        self.assertEqual(again.code, 1)
        self.assertEqual(again.err.count("\n"), 1)
        self.assertIn("refusing to overwrite", again.err)

        token = await run("ttp", "token", "--data-dir", self.ttp, "--name", "Bank.Example", "--role", "server", "--ttl", "30m")
        self.assertEqual(token.code, 0, token)
        self.assertRegex(token.out, TOKEN_LINE)
        store = Store.open(TTPPaths(Path(self.ttp)).db)
        self.addCleanup(store.close)
        record = store.get_token(Token.parse(token.out).token_id)
        assert record is not None
        self.assertEqual(record.name, "bank.example")
        self.assertEqual((record.expires_at - record.created_at).total_seconds(), 1800)

        listing = await run("ttp", "list", "--data-dir", self.ttp)
        self.assertEqual(listing.code, 0)
        self.assertEqual(
            listing.out.splitlines()[0].split(), ["SERIAL", "NAME", "ROLE", "ENROLLMENT", "NOT", "BEFORE", "NOT", "AFTER", "STATUS"]
        )

        unknown = await run("ttp", "revoke", "--data-dir", self.ttp, "abcdef")
        self.assertEqual(unknown.code, 1)
        self.assertEqual(unknown.err, "tlsotp ttp revoke: no certificate with serial abcdef was issued by this TTP\n")

    async def test_commands_on_a_dir_without_ca(self) -> None:
        for argv in (
            ("ttp", "token", "--data-dir", self.ttp, "--name", "x", "--role", "client"),
            ("ttp", "list", "--data-dir", self.ttp),
            ("ttp", "revoke", "--data-dir", self.ttp, "ab"),
        ):
            result = await run(*argv)
            self.assertEqual(result.code, 1, result)
            self.assertEqual(result.err.count("\n"), 1)
            self.assertIn("no CA in", result.err)

    async def test_init_with_passphrase_and_rsa(self) -> None:
        passphrase = self.base / "pass"
        self.base.mkdir()
        passphrase.write_text("s3cret\n")
        result = await run("ttp", "init", "--data-dir", self.ttp, "--key-type", "rsa-2048", "--subject", "Test CA",
                           "--days", "30", "--passphrase-file", str(passphrase))
        self.assertEqual(result.code, 0, result)
        self.assertIn(b"ENCRYPTED", (Path(self.ttp) / "ca-key.pem").read_bytes())
        root = pem.load_certificate(Path(self.ttp) / "ca.pem")
        self.assertIn("CN=Test CA", root.subject.rfc4514_string())
        empty = self.base / "empty"
        empty.write_text("\n")
        refused = await run("ttp", "init", "--data-dir", str(self.base / "other"), "--passphrase-file", str(empty))
        self.assertEqual(refused.code, 1)
        self.assertIn("is empty", refused.err)


class PartyCommandTests(unittest.TestCase):
    async def test_enroll_renew_crl_revoke_list(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        party = str(base / "bank")
        fp = (await run("ttp", "init", "--data-dir", ttp)).out.strip()
        _, endpoint = start_ttp(self, Path(ttp))
        token = (await run("ttp", "token", "--data-dir", ttp, "--name", "bank.example", "--role", "server")).out.strip()
        enroll_args = ("enroll", "--data-dir", party, "--ttp", endpoint, "--ca-fingerprint", fp, "--token", token,
                       "--name", "bank.example", "--role", "server")
        enrolled = await run(*enroll_args)
        self.assertEqual(enrolled.code, 0, enrolled)
        self.assertIn("enrolled bank.example as server", enrolled.out)

        again = await run(*enroll_args)
        self.assertEqual(again.code, 1)
        self.assertEqual(again.err.count("\n"), 1)
        self.assertIn("already enrolled", again.err)

        token_file = base / "token"
        token_file.write_text((await run("ttp", "token", "--data-dir", ttp, "--name", "alice.example", "--role", "client")).out)
        wrong_role = await run("enroll", "--data-dir", str(base / "alice"), "--ttp", endpoint, "--ca-cert", str(Path(ttp) / "ca.pem"),
                               "--token-file", str(token_file), "--name", "alice.example", "--role", "server")
        self.assertEqual(wrong_role.code, 1)
        self.assertRegex(wrong_role.err, r"^tlsotp enroll: the TTP refused: role_mismatch: .*\n$")

        renewed = await run("renew", "--data-dir", party, "--ttp", endpoint, "--new-key", "--key-type", "ec-p384")
        self.assertEqual(renewed.code, 0, renewed)
        self.assertIn("new key", renewed.out)

        listing = (await run("ttp", "list", "--data-dir", ttp)).out.splitlines()
        self.assertEqual(len(listing), 3)
        enrollment = Token.parse(token).token_id
        self.assertEqual([line.split()[3] for line in listing[1:]], [enrollment, enrollment])  # one lineage
        self.assertEqual(sum("superseded by" in line for line in listing[1:]), 1)
        current = next(line.split()[0] for line in listing[1:] if line.endswith("valid"))
        first = next(line.split()[0] for line in listing[1:] if line.split()[0] != current)
        revoked = await run("ttp", "revoke", "--data-dir", ttp, current, "--reason", "key-compromise")
        self.assertEqual(revoked.code, 0, revoked)
        self.assertIn(f"enrollment {enrollment} revoked", revoked.out)

        out_file = base / "out-crl.pem"
        crl = await run("crl", "--ttp", endpoint, "--data-dir", party, "--out", str(out_file))
        self.assertEqual(crl.code, 0, crl)
        # The whole lineage: the superseded (still unexpired) certificate too.
        self.assertEqual(sorted(line.split()[0] for line in crl.out.splitlines()[1:]), sorted([current, first]))
        self.assertIn("key_compromise", crl.out)
        self.assertEqual(pem.load_crl(out_file), pem.load_crl(Path(party) / "crl.pem"))

        statuses = (await run("ttp", "list", "--data-dir", ttp)).out
        self.assertEqual(statuses.count("revoked (key_compromise)"), 2, statuses)

        not_renewable = await run("renew", "--data-dir", party, "--ttp", endpoint)
        self.assertEqual(not_renewable.code, 1)
        self.assertIn("not_renewable", not_renewable.err)

        wrong_pin = await run("crl", "--ttp", endpoint, "--ca-fingerprint", "sha256:" + "00" * 32)
        self.assertEqual(wrong_pin.code, 1)
        self.assertRegex(wrong_pin.err, r"^tlsotp crl: unknown_ca: .*\n$")

        unreachable = await run("crl", "--ttp", "tcp:host=127.0.0.1:port=1", "--data-dir", party)
        self.assertEqual(unreachable.code, 1)
        self.assertIn("cannot connect", unreachable.err)
