"""One worker process of ``twistd -n tlsotp-server --workers N``; the supervisor starts it.

    python -m tlsotp.commands.bank_worker CONFIG_JSON     (the listening socket on fd 3)

Not for operators: the supervisor (``tlsotp.services.workers.WorkerSupervisor``) runs it with
the socket it listens on as file descriptor 3, its settings as one JSON argument and its secrets
(``WorkerSecrets``: a database password) as one JSON line on stdin, reads its
log events as lines on stdout, sends SIGHUP to make it reload the certificate and CRL from
the data dir, and SIGTERM to stop it (it then drains like the daemon). It also stops when the
supervisor dies (``PR_SET_PDEATHSIG``). Exit status 1: it could not start (one critical line).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.logger import Logger, globalLogBeginner

from tlsotp.services.shutdown import describe_startup_error, stop_with_status
from tlsotp.services.workers import (
    MAX_SECRETS_LINE,
    BankWorker,
    WorkerConfig,
    WorkerEventsRelay,
    WorkerLogWriter,
    WorkerSecrets,
    set_parent_death_signal,
)

#: argv that runs one worker (the supervisor appends its JSON settings).
COMMAND = (sys.executable, "-m", "tlsotp.commands.bank_worker")

log = Logger(namespace="tlsotp.services.workers")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tlsotp.commands.bank_worker CONFIG_JSON (started by tlsotp-server --workers)",
              file=sys.stderr)
        return 2
    config = WorkerConfig.from_json(argv[0])
    # First, before anything can block: the supervisor writes one line and closes our stdin.
    secrets = WorkerSecrets.from_line(sys.stdin.buffer.readline(MAX_SECRETS_LINE))
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != config.supervisor_pid:
        return 1  # the supervisor died before we asked to follow it
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor  # the running one provides IReactorThreads besides the rest
    output = WorkerLogWriter(sys.stdout, reactor)
    globalLogBeginner.beginLoggingTo([output], redirectStandardIO=False)
    events = WorkerEventsRelay(output) if config.metrics else None
    worker = BankWorker(config, reactor, secrets=secrets, events=events)
    status = [0]

    def failed(failure: Any) -> None:
        log.critical("worker {index} cannot start: {error}", index=config.index,
                     error=describe_startup_error(failure.value))
        status[0] = 1
        stop_with_status(reactor, 1)

    def start() -> None:
        # SIGHUP from the supervisor: reload; queued for the reactor, as Twisted does for SIGTERM.
        # Installed first: the supervisor may send it as soon as it reads the "serving" line.
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(worker.reload))
        worker.startService()
        worker.ready.addErrback(failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", worker.stopService)
    reactor.run()
    output.flush()  # the lines of the stop itself
    return status[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
