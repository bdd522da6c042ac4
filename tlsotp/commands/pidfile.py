"""A pidfile that names a live process which is no daemon of ours is stale: replace it.

twistd refuses to start ("Another twistd server is running") while the pid its pidfile names
is alive (``kill(pid, 0)``), and removes the file only once that pid is gone. After a reboot,
or in a restarted container, the pid of a daemon that never removed its pidfile (killed with
SIGKILL, or the power went) often belongs to another program by then, or to the new daemon
itself (a container's pid 1), and the daemon would not start until someone deleted the file.

twistd parses the command line, the tap's ``postOptions`` included, before it checks the
pidfile (``UnixApplicationRunner.preApplication``), so the taps call
``replace_stale_pidfile`` there: a pidfile naming this very process, or a live process whose
command line (``/proc/PID/cmdline``) names neither a tlsotp daemon nor twistd, is removed with
one log line, and twistd then writes its own. Any other live process keeps twistd's refusal
(better a refusal than two daemons on one data dir); where ``/proc`` cannot tell (another
system, another user's hidden process), twistd's own check decides.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger
from twisted.python import usage

#: The tap names of tlsotp's daemons (twisted/plugins/tlsotp_plugins.py).
DAEMON_NAMES = frozenset({"tlsotp-ttp", "tlsotp-server", "tlsotp-client"})

log = Logger()


def may_be_a_daemon(pid: int) -> bool:
    """Whether ``pid`` may be a running tlsotp daemon (or another twistd): True unless its
    command line, read from /proc, shows it is not (a zombie's is empty: not a daemon)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone (twistd removes the file then), hidden, or no /proc: twistd decides
        return True
    return any(arg.decode(errors="replace") in DAEMON_NAMES or b"twistd" in arg for arg in argv)


def replace_stale_pidfile(options: usage.Options) -> None:
    """Remove twistd's pidfile if it names this process or a live one that is not a daemon."""
    parent = options.parent
    pidfile = parent.get("pidfile") if parent is not None else None
    if not pidfile:  # not under twistd, or --pidfile ''
        return
    path = Path(os.path.abspath(pidfile))  # as twistd resolves it, from the same directory
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or not a number: twistd's check says so
        return
    if pid != os.getpid() and may_be_a_daemon(pid):
        return
    owner = "this process" if pid == os.getpid() else f"process {pid} is not a tlsotp daemon"
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:  # twistd's check then refuses, and says why
        log.warn("cannot remove the stale pidfile {path}: {error}", path=str(path), error=exc.strerror or str(exc))
        return
    log.warn("replacing the stale pidfile {path}: {owner}", path=str(path), owner=owner)
