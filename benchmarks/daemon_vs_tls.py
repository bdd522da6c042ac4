"""The real ``twistd -n tlsotp-server`` beside a Twisted TLS 1.3 mutual-TLS server, same run.

    pip install -e '.[bench]'
    python benchmarks/daemon_vs_tls.py [--concurrency 50] [--sessions 1000] [--repetitions 3]

Starts a TTP (``twistd -n tlsotp-ttp``), enrolls the bank server daemon (EC P-256, default
suites), a second P-256 server identity and a P-256 client from it, then starts the real
``twistd -n tlsotp-server`` and, beside it, a Twisted TLS 1.3 server (pyOpenSSL) that requires
a client certificate from the same TTP root and answers a tiny request with a tiny response.
Each server is driven by its own load-generator process (``--concurrency`` sessions at a time,
``--sessions`` in all, each a fresh connection and full handshake), interleaved, for
``--repetitions`` rounds. A tlsotp session is handshake + OTP request + grant (the store
commits each OTP); a TLS session is handshake + request + response.

Reported per run: the server process's CPU per session (utime + stime from /proc/PID/stat
before and after the load), sessions/s, client-side latency p50/p99, and the ratio tlsotp/TLS
of CPU per session. Not a test: numbers vary with the machine and its load; on a shared
2-core machine absolute numbers are noisy and only the ratio within one run means much.
The load generator runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
TLSOTP = [sys.executable, "-m", "tlsotp.commands.main"]
SELF = [sys.executable, str(Path(__file__).resolve())]
REQUEST = b'{"request": "otp", "account": "alice", "transaction": "0123456789abcdef"}'
RESPONSE = b'{"otp": "492817", "expires_in": 60, "transaction": "0123456789abcdef"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tlsotp(*args: str) -> str:
    result = subprocess.run([*TLSOTP, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"tlsotp {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


#: Connects in the burst each server takes before its measured runs (issue 12: 500, all accepted within 100 ms).
BURST = 500


def burst_ms(port: int, count: int = BURST) -> float:
    """Milliseconds from ``count`` connects started at once until the server has accepted every
    one: each connect completed (a backlog overflow shows as a 1 s SYN retransmit) and then the
    listening socket's accept queue empty (``tests.processes.listen_backlog``, from /proc/net/tcp),
    so the daemon's own accept() calls are in it, not only the kernel's handshakes. Prints both times."""
    from tests.processes import listen_backlog

    selector = selectors.DefaultSelector()
    sockets = []
    start = time.perf_counter()
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        selector.register(s, selectors.EVENT_WRITE)
        sockets.append(s)
    pending = count
    deadline = start + 30
    while pending and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1):
            selector.unregister(key.fileobj)
            pending -= 1
    connected = time.perf_counter()
    queued = listen_backlog(port)
    while queued and time.perf_counter() < deadline:
        time.sleep(0.0005)
        queued = listen_backlog(port)
    accepted = time.perf_counter()
    for s in sockets:
        s.close()
    selector.close()
    if pending or queued or queued is None:
        why = "no listening socket found in /proc/net/tcp" if queued is None else "not all accepted within 30 s"
        print(f"burst of {count} connects on port {port}: {why}", file=sys.stderr)
        return float("inf")
    print(f"burst of {count} connects on port {port}: all connected at {(connected - start) * 1e3:.1f} ms, "
          f"the accept queue empty (all accepted by the server) at {(accepted - start) * 1e3:.1f} ms", flush=True)
    return (accepted - start) * 1e3


def wait_listening(process: subprocess.Popen[bytes], port: int, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} not listening on {port} after {seconds} s")


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(argv, cwd=REPO, env=env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the TLS server and the load generators (run as subprocesses of this script) ---------------


def tls_options(data_dir: Path, *, server: bool, hostname: str = "") -> Any:
    from OpenSSL import crypto
    from twisted.internet import ssl

    root = ssl.Certificate.loadPEM((data_dir / "ca.pem").read_bytes())
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, (data_dir / "key.pem").read_bytes())
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, (data_dir / "cert.pem").read_bytes())
    if server:
        return ssl.CertificateOptions(
            privateKey=key, certificate=cert, verify=True, requireCertificate=True, caCerts=[root.original],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_3, enableSessions=False,
        )
    client_cert = ssl.PrivateCertificate.load((data_dir / "cert.pem").read_bytes(), ssl.KeyPair.load(
        (data_dir / "key.pem").read_bytes(), crypto.FILETYPE_PEM), crypto.FILETYPE_PEM)
    return ssl.optionsForClientTLS(
        hostname, trustRoot=root, clientCertificate=client_cert, extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
    )


def run_tls_server(data_dir: Path, port: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    class Answer(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(RESPONSE)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    factory = Factory.forProtocol(Answer)
    factory.noisy = False
    reactor.listenSSL(port, factory, tls_options(data_dir, server=True), backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def load_main(argv: list[str]) -> None:
    """A load generator: ``sessions`` fresh sessions, ``concurrency`` at a time; one JSON line out."""
    from twisted.internet import defer, task

    kind, data_dir, port, server_name, concurrency, sessions, tag = argv[:7]
    suite = argv[7] if len(argv) > 7 and argv[7] != "-" else None
    count_bytes = len(argv) > 8 and argv[8] == "count"
    wire = WireCount()

    async def body(reactor: Any) -> None:
        latencies: list[float] = []
        failures: list[str] = []
        one = _session_maker(kind, Path(data_dir), int(port), server_name, tag, reactor, suite,
                             wire if count_bytes else None)
        indices = iter(range(int(sessions)))

        async def worker() -> None:
            for i in indices:
                start = time.perf_counter()
                try:
                    await one(i)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - start)

        cpu, start = time.process_time(), time.perf_counter()
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(int(concurrency))])
        print(json.dumps({
            "elapsed": time.perf_counter() - start, "latencies": latencies, "failures": failures[:5],
            "failed": len(failures), "cpu": time.process_time() - cpu,
            "sent": wire.sent, "received": wire.received, "own_sent": wire.own_sent, "own_received": wire.own_received,
            "negotiated": wire.negotiated,
        }), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


class WireCount:
    """Bytes a load generator's connections wrote and read on TCP (below TLS for the TLS server,
    so both servers are counted the same way: what crossed the socket)."""

    def __init__(self) -> None:
        self.sent = self.received = 0
        # What the tlsotp client's own ChannelStats say it sent and received: a cross-check.
        self.own_sent = self.own_received = 0
        self.negotiated = ""  # the suite (tlsotp), or the cipher and key-exchange group (TLS), negotiated

    def endpoint(self, inner: Any) -> Any:
        from twisted.internet.interfaces import IStreamClientEndpoint
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        from zope.interface import implementer

        count = self

        class Counting(ProtocolWrapper):
            def write(self, data: bytes) -> None:
                count.sent += len(data)
                super().write(data)

            def writeSequence(self, data: Any) -> None:
                count.sent += sum(len(d) for d in data)
                super().writeSequence(data)

            def dataReceived(self, data: bytes) -> None:
                count.received += len(data)
                super().dataReceived(data)

        @implementer(IStreamClientEndpoint)
        class CountingEndpoint:
            def connect(self, factory: Any) -> Any:
                wrapping = WrappingFactory(factory)
                wrapping.protocol = Counting
                return inner.connect(wrapping).addCallback(lambda protocol: protocol.wrappedProtocol)

        return CountingEndpoint()


def _session_maker(kind: str, data_dir: Path, port: int, server_name: str, tag: str, reactor: Any,
                   suite: str | None = None, wire: WireCount | None = None) -> Any:
    from twisted.internet import defer
    from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.protocol import Protocol

    if kind == "tlsotp":
        from tlsotp.client import ClientSettings, load_credentials, request_otp
        from tlsotp.handshake.suites import DEFAULT_SUITES, suite_named
        from tlsotp.pki import pem

        credentials = load_credentials(data_dir)
        assert credentials is not None
        crl_path = data_dir / "crl.pem"
        settings = ClientSettings(
            credentials.key, credentials.chain, credentials.root, server_name,
            pem.load_crl(crl_path) if crl_path.exists() else None, timeout_seconds=60,
            suites=(suite_named(suite),) if suite else DEFAULT_SUITES,
        )
        endpoint: Any = f"tcp:host=127.0.0.1:port={port}"
        if wire is not None:
            endpoint = wire.endpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))

        def own_count(result: Any) -> Any:
            assert wire is not None
            wire.own_sent += result.stats.bytes_sent
            wire.own_received += result.stats.bytes_received
            wire.negotiated = result.suite.name
            return result

        def one_otp(i: int) -> Any:
            session = request_otp(reactor, endpoint, settings, f"bench-{tag}-{i}")
            return session.addCallback(own_count) if wire is not None else session

        return one_otp

    options = tls_options(data_dir, server=False, hostname=server_name)

    class Ask(Protocol):
        def __init__(self) -> None:
            self.done: defer.Deferred[bytes] = defer.Deferred()
            self.received = b""

        def connectionMade(self) -> None:
            self.transport.write(REQUEST)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.received += data
            if wire is not None and not wire.negotiated:
                handle = self.transport.getHandle()  # type: ignore[union-attr]
                wire.negotiated = f"{handle.get_cipher_name()}, {handle.get_group_name()}"

        def connectionLost(self, reason: Any = None) -> None:
            if self.received == RESPONSE:
                self.done.callback(self.received)
            else:
                self.done.errback(reason)

    def one_tls(i: int) -> Any:
        protocol = Ask()
        if wire is None:
            endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
        else:
            endpoint = wrapClientTLS(options, wire.endpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port)))
        return connectProtocol(endpoint, protocol).addCallback(lambda _: protocol.done)

    return one_tls


# -- the orchestration ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per run")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dirs)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tlsotp-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        init = tlsotp("ttp", "init", "--data-dir", str(work / "ttp"))
        match = re.search(r"sha256:[0-9a-f]{64}", init)
        assert match, init
        fingerprint = match.group(0)

        def token(name: str, role: str) -> str:
            out = tlsotp("ttp", "token", "--data-dir", str(work / "ttp"), "--name", name, "--role", role)
            return out.strip().splitlines()[-1].strip()

        ttp_port, bank_port, tls_port = free_port(), free_port(), free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                                "--data-dir", str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1:backlog=1024"],
                               work / "ttp.out"))
        wait_listening(processes[-1], ttp_port, "the TTP")
        bank = spawn([
            *TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "server.log"), "tlsotp-server",
            "--data-dir", str(work / "server"), "--name", "bank.example",
            "--listen", f"tcp:{bank_port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
            "--ca-fingerprint", fingerprint, "--token", token("bank.example", "server"), "--key-type", "ec-p256",
            "--max-connections", "1024", "--max-per-address", "1024",
        ], work / "server.out")
        processes.append(bank)
        for data_dir, name, role in ((work / "tls-server", "tlsbank.example", "server"),
                                     (work / "client", "alice.example", "client")):
            tlsotp("enroll", "--data-dir", str(data_dir), "--ttp", ttp, "--ca-fingerprint", fingerprint,
                   "--token", token(name, role), "--name", name, "--role", role, "--key-type", "ec-p256")
        tlsotp("crl", "--data-dir", str(work / "client"), "--ttp", ttp)
        tls = spawn([*SELF, "--tls-server", str(work / "tls-server"), str(tls_port)], work / "tls-server.out")
        processes.append(tls)
        wait_listening(bank, bank_port, "the tlsotp server")
        wait_listening(tls, tls_port, "the TLS server")
        targets = {"tlsotp": (bank, bank_port, "bank.example"), "tls": (tls, tls_port, "tlsbank.example")}
        rows: list[dict[str, Any]] = []
        failed = False
        # A short warm-up of each (imports, first OTP database pages), not measured.
        for kind, (_, port, name) in targets.items():
            load(kind, work, port, name, min(10, args.concurrency), 20, "warm")
        for rep in range(1, args.repetitions + 1):
            for kind, (process, port, name) in targets.items():
                before = cpu_seconds(process.pid)
                result = load(kind, work, port, name, args.concurrency, args.sessions, f"{rep}")
                after = cpu_seconds(process.pid)
                done = len(result["latencies"])
                if result["failed"] or done != args.sessions:
                    failed = True
                    print(f"{kind} run {rep}: {result['failed']} sessions failed: {result['failures']}", file=sys.stderr)
                rows.append({
                    "kind": kind, "rep": rep, "sessions": done,
                    "cpu_us": (after - before) / max(done, 1) * 1e6,
                    "rate": done / result["elapsed"],
                    "p50": percentile(result["latencies"], 50) * 1e3 if done else float("nan"),
                    "p99": percentile(result["latencies"], 99) * 1e3 if done else float("nan"),
                    "load_cpu_us": result["cpu"] / max(done, 1) * 1e6,
                })
                print(render_row(rows[-1]), flush=True)
        print()
        print(render(rows, args))
        return 1 if failed else 0
    finally:
        for process in reversed(processes):
            stop(process)
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def load(kind: str, work: Path, port: int, server_name: str, concurrency: int, sessions: int, tag: str,
         *, client: Path | None = None, suite: str | None = None, count_bytes: bool = False) -> dict[str, Any]:
    """Run one load-generator process; ``client`` is the client's data dir (default
    ``work/client``), ``suite`` the one tlsotp suite it offers (default: all), ``count_bytes``
    counts the bytes each way on the wire (a little load-generator CPU: not for timed runs)."""
    out = subprocess.run(
        [*SELF, "--load", kind, str(client or work / "client"), str(port), server_name,
         str(concurrency), str(sessions), tag, suite or "-", "count" if count_bytes else "-"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"load generator for {kind} failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def render_row(row: dict[str, Any]) -> str:
    return (f"run {row['rep']} {row['kind']:<6}  {row['sessions']:>5} sessions  server CPU {row['cpu_us']:7.0f} us/session  "
            f"{row['rate']:6.1f} sessions/s  p50 {row['p50']:6.1f} ms  p99 {row['p99']:6.1f} ms  "
            f"load generator CPU {row['load_cpu_us']:6.0f} us/session")


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    header = ("server", "server CPU us/session", "sessions/s", "p50 ms", "p99 ms", "load gen CPU us/session")
    lines = [f"{args.repetitions} interleaved repetitions of {args.sessions} sessions at {args.concurrency} concurrent, "
             "EC P-256 certificates from one TTP; medians of the repetitions", ""]
    table = []
    median: dict[str, float] = {}
    for kind in ("tlsotp", "tls"):
        mine = [r for r in rows if r["kind"] == kind]
        values = {k: statistics.median(r[k] for r in mine) for k in ("cpu_us", "rate", "p50", "p99", "load_cpu_us")}
        median[kind] = values["cpu_us"]
        label = "tlsotp-server (twistd)" if kind == "tlsotp" else "Twisted TLS 1.3 mTLS"
        table.append((label, f"{values['cpu_us']:.0f}", f"{values['rate']:.1f}", f"{values['p50']:.1f}",
                      f"{values['p99']:.1f}", f"{values['load_cpu_us']:.0f}"))
    widths = [max(len(str(c)) for c in column) for column in zip(header, *table)]
    rule = "  ".join("=" * w for w in widths)
    lines += [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.append(rule)
    per_rep = [
        next(r["cpu_us"] for r in rows if r["kind"] == "tlsotp" and r["rep"] == rep)
        / next(r["cpu_us"] for r in rows if r["kind"] == "tls" and r["rep"] == rep)
        for rep in range(1, args.repetitions + 1)
    ]
    lines.append("")
    lines.append(f"server CPU per session, tlsotp/TLS: {median['tlsotp'] / median['tls']:.2f}x (medians); "
                 f"per repetition: {', '.join(f'{r:.2f}x' for r in per_rep)}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tls-server"]:
        run_tls_server(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--load"]:
        load_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
