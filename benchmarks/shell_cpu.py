"""The bank server's CPU per session in one process, for an instruction count (issue 12).

    python benchmarks/shell_cpu.py setup WORK
    PYTHONPATH=TREE valgrind --tool=callgrind python benchmarks/shell_cpu.py server WORK SESSIONS &
    PYTHONPATH=TREE python benchmarks/shell_cpu.py client WORK SESSIONS [CONCURRENCY]

``setup`` writes a root, a server's and a client's credentials and a CRL into WORK (no TTP).
``server`` runs the real ``BankServerService`` (``build_service``, as ``twistd tlsotp-server``
builds it: the SQLite OTP store in its data dir, the connection slots, the drain on stop) with
twistd's default text log observer on ``WORK/server.log``; the CRL fetch finds no TTP and the
service falls back to the stored, fresh CRL. It writes its port to ``WORK/port``, serves until
SESSIONS OTPs were granted, stops the service as SIGTERM would (graceful drain, the store closed
last) and exits. ``client`` (another process, so that the count is the server's alone) runs
SESSIONS fresh sessions, CONCURRENCY (default 1) at a time.

Under callgrind the server's instruction count is repeatable whatever else the machine runs:
``(I(N) - I(n)) / (N - n)`` for two session counts is the server's cost per session, start-up,
imports and shutdown cancelled. The script imports ``tlsotp`` from ``PYTHONPATH``, so one copy
of it measures two trees (an old and a new worktree). Not a test: it decides nothing.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Any

SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"


def setup(work: Path) -> None:
    from tlsotp.pki import pem
    from tlsotp.pki.builders import build_crl, build_root, issue_certificate
    from tlsotp.pki.credentials import Credentials, write_credentials
    from tlsotp.pki.keys import KeyType, generate_private_key
    from tlsotp.pki.roles import Role

    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = generate_private_key(KeyType.EC_P256)
    root = build_root(root_key, "tlsotp shell_cpu root", days=30, now=now)
    for name, role in ((SERVER_NAME, Role.SERVER), (CLIENT_NAME, Role.CLIENT)):
        key = generate_private_key(KeyType.EC_P256)
        cert = issue_certificate(root_key, root, key.public_key(), name=name, role=role, days=7, now=now)
        data_dir = work / role.value
        write_credentials(data_dir, Credentials(key, [cert], root), new_key=True)
        crl = build_crl(root_key, root, [], now=now, next_update=datetime.timedelta(days=1), crl_number=1)
        pem.write_crl(data_dir / "crl.pem", crl)


def server(work: Path, sessions: int) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.python.logfile import LogFile

    from tlsotp.pki.roles import Role
    from tlsotp.server import BankServerSettings, build_service

    reactor: Any = _reactor
    # What twistd -n --logfile FILE installs.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(LogFile.fromFullPath(str(work / "server.log")))])
    settings = BankServerSettings(
        data_dir=work / Role.SERVER.value, name=SERVER_NAME, ttp="tcp:host=127.0.0.1:port=1",
        listen="tcp:0:interface=127.0.0.1:backlog=1024", max_connections=1024, max_per_address=1024,
        timeout=600.0, first_message_timeout=600.0,  # valgrind is slow: no deadline may pass
    )
    service = build_service(settings, reactor)

    def watch() -> None:
        factory = service.factory
        if factory is not None and factory.sessions_completed >= sessions:
            service.stopService().addBoth(lambda _: reactor.stop())
            return
        reactor.callLater(0.05, watch)

    def listening(_: object) -> None:
        (work / "port.tmp").write_text(str(service.port.getHost().port))  # type: ignore[union-attr]
        (work / "port.tmp").replace(work / "port")  # the client sees the whole number or nothing
        watch()

    def start() -> None:
        service.startService()
        service.ready.addCallbacks(listening, lambda failure: (print(failure), reactor.stop()))

    reactor.callWhenRunning(start)
    reactor.run()


def client(work: Path, sessions: int, concurrency: int) -> None:
    from twisted.internet import defer, task

    from tlsotp.client import ClientSettings, load_credentials, request_otp
    from tlsotp.pki import pem
    from tlsotp.pki.roles import Role

    data_dir = work / Role.CLIENT.value
    credentials = load_credentials(data_dir)
    assert credentials is not None
    settings = ClientSettings(
        credentials.key, credentials.chain, credentials.root, SERVER_NAME, pem.load_crl(data_dir / "crl.pem"),
        timeout_seconds=600,
    )
    port_file = work / "port"
    while not port_file.exists():
        time.sleep(0.2)
    endpoint = f"tcp:host=127.0.0.1:port={int(port_file.read_text())}"

    async def body(reactor: Any) -> None:
        indices = iter(range(sessions))

        async def worker() -> None:
            for i in indices:
                await request_otp(reactor, endpoint, settings, f"shell-cpu {i}")

        await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


def main(argv: list[str]) -> None:
    mode, work = argv[0], Path(argv[1])
    if mode == "setup":
        setup(work)
    elif mode == "server":
        server(work, int(argv[2]))
    elif mode == "client":
        client(work, int(argv[2]), int(argv[3]) if len(argv) > 3 else 1)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
