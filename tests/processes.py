"""Running the project's real programs as subprocesses from tests: twistd and tlsotp."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: argv that runs this interpreter's twistd, wherever its script was installed.
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]

#: argv that runs the tlsotp command from this checkout.
TLSOTP = [sys.executable, "-m", "tlsotp.commands.main"]


def subprocess_env() -> dict[str, str]:
    """The environment for a Python subprocess that must import this checkout and its plugins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def unused_port() -> int:
    """A loopback port nothing listens on right now (free to use, or to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
