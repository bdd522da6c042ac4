"""``tlsotp ttp backup --to FILE`` (issue 9): SQLite's online backup into a new 0600 file,
never over an existing one, a self-contained copy that opens as the same TTP database."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from cryptography import x509
from twisted.trial import unittest

from tests.unit.test_cli_ttp import run
from tests.unit.test_ttp_issuer import IssuerTestCase
from tlsotp.pki.roles import Role
from tlsotp.ttp.store import Store


class StoreBackupTests(IssuerTestCase):
    def test_the_copy_is_private_whole_and_self_contained(self) -> None:
        cert = self.enroll("bank.example", Role.SERVER)
        self.ttp.store.revoke(cert.serial_number, x509.ReasonFlags.key_compromise, now=self.ttp.clock.now)
        outstanding = self.ttp.token("alice.example", Role.CLIENT)
        target = Path(self.mktemp())
        self.ttp.store.backup_to(target)
        self.assertEqual(stat.S_IMODE(target.stat().st_mode), 0o600)
        self.assertFalse(Path(f"{target}-wal").exists())
        raw = sqlite3.connect(target)
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("PRAGMA journal_mode").fetchone(), ("delete",))
        raw.close()
        copy = Store.open(target)
        self.addCleanup(copy.close)
        self.assertEqual(copy.list_certificates(), self.ttp.store.list_certificates())
        self.assertEqual(copy.revocations(), self.ttp.store.revocations())
        self.assertEqual(copy.get_token(outstanding.token_id), self.ttp.store.get_token(outstanding.token_id))

    def test_an_existing_file_is_never_overwritten(self) -> None:
        target = Path(self.mktemp())
        target.write_bytes(b"precious")
        with self.assertRaises(FileExistsError):
            self.ttp.store.backup_to(target)
        self.assertEqual(target.read_bytes(), b"precious")


class BackupCommandTests(unittest.TestCase):
    async def test_backup_command(self) -> None:
        base = Path(self.mktemp())
        ttp = str(base / "ttp")
        await run("ttp", "init", "--data-dir", ttp)
        await run("ttp", "token", "--data-dir", ttp, "--name", "bank.example", "--role", "server")
        target = base / "ttp-backup.sqlite3"
        done = await run("ttp", "backup", "--data-dir", ttp, "--to", str(target))
        self.assertEqual(done.code, 0, done)
        self.assertIn(f"to {target} (0 certificates; mode 0600)", done.out)
        self.assertIn("stop the TTP, copy it in place as ttp.sqlite3", done.out)
        self.assertEqual(stat.S_IMODE(target.stat().st_mode), 0o600)
        before = target.read_bytes()
        again = await run("ttp", "backup", "--data-dir", ttp, "--to", str(target))
        self.assertEqual((again.code, again.out), (1, ""))
        self.assertEqual(again.err, f"tlsotp ttp backup: {target} exists: a backup never overwrites a file; name a new one\n")
        self.assertEqual(target.read_bytes(), before)
        nowhere = await run("ttp", "backup", "--data-dir", ttp, "--to", str(base / "no" / "such" / "dir" / "b"))
        self.assertEqual(nowhere.code, 1)
        self.assertRegex(nowhere.err, r"^tlsotp ttp backup: cannot back up to .*: No such file or directory\n$")
        missing = await run("ttp", "backup", "--data-dir", ttp)
        self.assertEqual(missing.code, 2)
        self.assertIn("--to FILE is required", missing.err)
