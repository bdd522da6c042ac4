"""A live TTP's database backed up with ``tlsotp ttp backup`` while its daemon runs and serves,
then restored as README/docs/maintenance.rst say (the CA files and the backup as ttp.sqlite3 in
a new data dir): a new TTP daemon there serves the same certificates and the same CRL."""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from twisted.trial import unittest

from tests.process.test_end_to_end import tlsotp
from tests.processes import Daemon


class BackupRestoreTests(unittest.TestCase):
    def test_backup_of_a_live_ttp_restores_into_a_new_data_dir(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="tlsotp-backup-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        ttp_dir = workdir / "ttp"
        fingerprint = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(ttp_dir)).stdout)
        assert fingerprint
        ttp = Daemon(workdir, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(ttp.stop)
        ttp.wait_ready()
        endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"

        def enroll(name: str, role: str, port_endpoint: str = endpoint) -> None:
            token_file = workdir / f"{name}.token"
            token_file.write_text(tlsotp("ttp", "token", "--data-dir", str(ttp_dir), "--name", name, "--role", role).stdout)
            tlsotp("enroll", "--data-dir", str(workdir / name), "--ttp", port_endpoint, "--ca-fingerprint",
                   fingerprint.group(0), "--token-file", str(token_file), "--name", name, "--role", role)

        enroll("bank.example", "server")
        enroll("alice.example", "client")
        serial = json.loads(tlsotp("ttp", "list", "--data-dir", str(ttp_dir), "--json").stdout)["certificates"][0]["serial"]
        tlsotp("ttp", "revoke", "--data-dir", str(ttp_dir), serial, "--reason", "key-compromise")
        crl_before = tlsotp("crl", "--ttp", endpoint, "--ca-fingerprint", fingerprint.group(0)).stdout

        # Back up while the daemon keeps enrolling: the copy is consistent whatever it caught.
        busy = threading.Thread(target=enroll, args=("carol.example", "client"))
        busy.start()
        backup = workdir / "ttp-backup.sqlite3"
        done = tlsotp("ttp", "backup", "--data-dir", str(ttp_dir), "--to", str(backup))
        busy.join(60)
        self.assertIn("backed up", done.stdout)
        self.assertEqual(stat.S_IMODE(backup.stat().st_mode), 0o600)
        refused = tlsotp("ttp", "backup", "--data-dir", str(ttp_dir), "--to", str(backup), check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("never overwrites", refused.stderr)
        self.assertIsNone(ttp.process.poll())  # the daemon ran through it all
        listing_at_backup = json.loads(tlsotp("ttp", "list", "--data-dir", str(ttp_dir), "--json").stdout)
        ttp.stop()

        # Restore: the CA files (kept apart, they never change) and the backup as ttp.sqlite3.
        restored = workdir / "restored"
        restored.mkdir(mode=0o700)
        for name in ("ca.pem", "ca-key.pem"):
            shutil.copy2(ttp_dir / name, restored / name)
        shutil.copy2(backup, restored / "ttp.sqlite3")
        for stale in ("ttp.sqlite3-wal", "ttp.sqlite3-shm"):
            (restored / stale).unlink(missing_ok=True)
        again = Daemon(workdir, "restored", "tlsotp-ttp", "--data-dir", str(restored), "--listen", "tcp:0:interface=127.0.0.1")
        self.addCleanup(again.stop)
        again.wait_ready()
        restored_listing = json.loads(tlsotp("ttp", "list", "--data-dir", str(restored), "--json").stdout)
        original = {c["serial"]: c for c in listing_at_backup["certificates"]}
        # Every certificate of the copy is the original's; carol's is there or not, by the race.
        self.assertLessEqual({c["serial"] for c in restored_listing["certificates"]}, set(original))
        self.assertGreaterEqual(len(restored_listing["certificates"]), 2)
        for certificate in restored_listing["certificates"]:
            self.assertEqual(certificate, original[certificate["serial"]])
        crl_after = tlsotp("crl", "--ttp", f"tcp:host=127.0.0.1:port={again.port}", "--ca-fingerprint",
                           fingerprint.group(0)).stdout
        self.assertEqual(crl_after, crl_before)  # the same CRL: number, revoked serial, reason
        self.assertIn(serial, crl_after)
