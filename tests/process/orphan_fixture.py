"""Not collected by trial (no ``test_`` prefix): run on its own by ``test_process_hygiene``.

Starts a TTP daemon through ``tests.processes.Daemon``, writes the daemon's pid to
``$TLSOTP_ORPHAN_DIR/daemon.pid`` and waits until this trial process is killed.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.processes import Daemon
from tlsotp.ttp.ca import init_ca


class StartsADaemonThenWaits(unittest.TestCase):
    timeout = 300

    async def test_start_a_daemon_then_wait_to_be_killed(self) -> None:
        workdir = Path(os.environ["TLSOTP_ORPHAN_DIR"])
        init_ca(workdir / "ttp")
        daemon = Daemon(workdir, "ttp", "tlsotp-ttp", "--data-dir", str(workdir / "ttp"), "--listen", "tcp:0:interface=127.0.0.1")
        daemon.wait_ready()
        (workdir / "daemon.pid.tmp").write_text(str(daemon.process.pid))
        (workdir / "daemon.pid.tmp").rename(workdir / "daemon.pid")
        await Deferred()  # never fires: the test that runs this kills the whole trial process first
