"""JSON logs for the daemons: ``twistd --logger tlsotp.services.json_log.observer ...``.

twistd's ``--logger`` takes the fully qualified name of a log observer *factory*, which it
calls with no arguments, and it then ignores ``--logfile``. This factory reads twistd's own
``--logfile`` back from its command line (with twistd's own option table, so ``-l FILE`` and
abbreviations work as they do for twistd) and writes Twisted's JSON event format
(``twisted.logger.jsonFileLogObserver``) there, or to stdout without one (or with ``-``): one
JSON object per line (no record separator), which ``twisted.logger.eventsFromJSONLogFile``
reads back and a log shipper can parse. The file is opened and rotated as twistd does for its
own text log (``twisted.python.logfile.LogFile``: a new file every 1 MB, and on SIGUSR1 unless
something else handles that signal). A daemonizing twistd closes stdout: give it ``--logfile``.
"""

from __future__ import annotations

import getopt
import signal
import sys
from typing import IO, Any, Sequence, cast

from twisted.logger import FileLogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile


def logfile_from_argv(argv: Sequence[str]) -> str | None:
    """twistd's ``--logfile`` (``-l``) in ``argv`` (without the program name), read the way
    twistd reads it: up to the plugin's name, so a plugin's own ``-l`` is not mistaken for it."""
    from twisted.scripts import twistd

    server_options: Any = twistd.ServerOptions  # type: ignore[attr-defined]  # this platform's, re-exported
    options = server_options()
    try:
        parsed, _ = getopt.getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return None
    logfile = None
    for name, value in parsed:
        if name in ("-l", "--logfile"):
            logfile = value
    return logfile


def observer() -> FileLogObserver:
    """The log observer factory for ``twistd --logger``: JSON lines to ``--logfile`` or stdout."""
    logfile = logfile_from_argv(sys.argv[1:])
    out: IO[Any]
    if not logfile or logfile == "-":
        out = sys.stdout
    else:
        log_file: Any = LogFile.fromFullPath(logfile)  # type: ignore[no-untyped-call]
        _rotate_on_sigusr1(log_file)
        out = cast(IO[Any], log_file)
    return jsonFileLogObserver(out, recordSeparator="")


def _rotate_on_sigusr1(log_file: Any) -> None:
    """What twistd does for its own log file: SIGUSR1 rotates it, unless the signal is taken."""
    if signal.getsignal(signal.SIGUSR1) not in (None, signal.SIG_DFL):
        return

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        cast(Any, reactor).callFromThread(log_file.rotate)

    signal.signal(signal.SIGUSR1, rotate)
