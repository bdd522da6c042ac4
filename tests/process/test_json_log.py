"""``twistd -n --logger tlsotp.services.json_log.observer`` (issue 9: a JSON log option): a real
TTP daemon writes Twisted's JSON events, one per line, to its ``--logfile``; they parse back
with ``twisted.logger.eventsFromJSONLogFile`` and say what the text log says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.logger import eventsFromJSONLogFile, formatEvent
from twisted.trial import unittest

from tests.process.test_end_to_end import tlsotp
from tests.processes import REPO, TWISTD, kill_group, poll


class JSONLogTests(unittest.TestCase):
    def test_the_ttp_daemon_logs_parseable_json_lines(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="tlsotp-json-log-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        ttp_dir = workdir / "ttp"
        fingerprint = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(ttp_dir)).stdout)
        assert fingerprint
        log_path = workdir / "ttp.json"
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile", "", "--logger", "tlsotp.services.json_log.observer", "--logfile", str(log_path),
             "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.addCleanup(kill_group, process.pid)

        def serving() -> str | None:
            text = log_path.read_text() if log_path.exists() else ""
            return text if '"tlsotp-ttp serving on {where}' in text else None

        self.assertTrue(poll(serving, 30), log_path.read_text() if log_path.exists() else "no log file")
        where = next(json.loads(line)["where"] for line in log_path.read_text().splitlines() if '"where"' in line)
        port = int(where.rsplit(":", 1)[1])
        tlsotp("crl", "--ttp", f"tcp:host=127.0.0.1:port={port}", "--ca-fingerprint", fingerprint.group(0))
        self.assertTrue(poll(lambda: "served CRL number" in log_path.read_text(), 10))
        process.terminate()
        stdout, _ = process.communicate(timeout=30)
        self.assertEqual(stdout, b"")  # everything went to the log file
        lines = log_path.read_text().splitlines()
        for line in lines:
            json.loads(line)  # every line is one JSON document
        with log_path.open() as file:
            events = list(eventsFromJSONLogFile(file))
        self.assertEqual(len(events), len(lines))
        texts = [formatEvent(event) for event in events]
        self.assertTrue(any(text.startswith(f"tlsotp-ttp serving on {where}, root {fingerprint.group(0)}") for text in texts),
                        texts)
        self.assertTrue(any(re.search(r"127\.0\.0\.1:\d+: served CRL number 1$", text) for text in texts), texts)
        self.assertTrue(all(event.get("log_namespace") and event.get("log_level") for event in events))
