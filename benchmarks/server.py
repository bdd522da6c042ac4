"""The real daemons under load, as a user comparing tlsotp with TLS would measure them (issue 12).

    pip install -e '.[bench]'
    python -m benchmarks.server [--concurrency 1,50,200] [--key-type ec-p256,rsa-2048] [--rsa-concurrency 50]
                                [--suite NAME] [--sessions 1000] [--repetitions 3] [--soak 10000] [--plot FILE]
                                [--workers N] [--workers-scan 1,2] [--workers-sessions 3000]
                                [--skip workers,otp-store,cross-worker-test,refresh-test] [--quick]
    python -m benchmarks.server --otp-store [--otp-store-rows 10000,100000,1000000]

Starts a TTP and, per ``--key-type`` (certificates of that type for server and client, from the
same TTP), the real ``twistd -n tlsotp-server`` and, beside it, a Twisted TLS 1.3 mutual-TLS
server (the server and load generator of ``benchmarks/daemon_vs_tls.py``). The tlsotp client
offers every default suite with EC P-256 (the first, ECDHE X25519 + ECDSA, is negotiated) and
only TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384 with RSA-2048; ``--suite`` makes every client offer
that one suite instead. For each key type and concurrency level (``--concurrency`` for EC,
``--rsa-concurrency`` for RSA), interleaved (tlsotp, TLS, tlsotp, ...) for ``--repetitions``
rounds, a separate load-generator process runs ``--sessions`` fresh sessions (a new connection
and a full handshake each; tlsotp: handshake + OTP request + grant, committed by the store; TLS:
handshake + tiny request + response).

Per configuration (medians of the repetitions): server CPU us/session over the server's whole
process tree (psutil: workers included), sessions/s, client p50/p99 latency, load generator CPU
us/session, the ratios tlsotp/TLS and tlsotp/crypto floor (the suite's primitives timed in one
loop, ``crypto_floor_us``), TLS/floor, and tlsotp/bound (the floor plus what a bare Twisted TCP
server spends per connection, ``benchmarks.ttp_enrollment.tcp_bound_us``); the bytes each way
per session, counted on TCP by the load generator in a run of its own (below TLS for the TLS
server; checked against the tlsotp client's own ChannelStats) with the suite, or TLS cipher and
group, negotiated; RSS per idle connection (500 connections opened and left silent) and a
500-connect burst (ms until the server has accepted every connection: each connect completed and
then the listening socket's accept queue empty, read from /proc/net/tcp), both taken first, before any session; the
TTP's CPU per enrollment (``--enrollments`` sequential ones from a separate process, then four
times as many 16 at a time, from requests prepared before the clock) against its signing floor
(CSR load + verify + sign, in one loop); and a memory soak: the first key type's
tlsotp server's RSS every tenth of ``--soak`` sessions at 50 concurrent, with the growth per
1,000 sessions, after ``--soak-fill`` rows were put into its OTP store (a day of traffic's worth
of rows is a running bank's steady state; a store smaller than its page cache would grow the
cache, and RSS, with every session's row) and ``--soak-warmup`` sessions were run and sampled
the same way (they fill the store's 8 MiB page cache, which a running bank's is: the growth is
given over the soak after them, and over the whole run beside it). Tables are printed as RST,
ready to paste into docs/performance.rst, and an SVG bar chart of CPU per session (tlsotp, TLS,
floor) per configuration is written to ``--plot`` (default docs/performance-cpu.svg) when
matplotlib is installed.

Then, in the same run, unless ``--skip`` names them: the workers mode (``benchmarks.workers``'
saturating rounds for ``--workers-scan``, interleaved, ``--workers-sessions`` sessions each, with
only the TTP left running), the OTP store benchmark below at ``--otp-store-rows``, and the
suite's cross-worker single-use test (``CROSS_WORKER_TEST``) and its test that CRL refreshes and
renewals run once, in the supervisor, with ``--workers 2`` (``REFRESH_TEST``), each run by trial.
Last, issue 12's "Done means" line by line (``benchmarks.verdict``): asked, printed, reached or
not. Exits 1 if any session, enrollment, soak chunk or workers-mode session failed, or either
test did (a figure not reached does not change the exit status).

``--otp-store`` runs only the store benchmark: ``tlsotp.otp.store`` issue + confirm on a real
SQLite file (``configure_connection``) filled to each of ``--otp-store-rows`` rows (1M rows: about
half a minute to fill on the development machine).

``--workers N`` is passed to ``tlsotp-server`` when given (the server's ``--workers``); the CPU
is summed over the process tree either way. ``--quick`` (1 and 5 concurrent, 20 sessions, one
repetition, a 200-session soak, no plot unless ``--plot`` is given; with ``--otp-store``, 1,000
and 10,000 rows) proves the benchmark runs end to end in half a minute; its numbers mean nothing.
Not a test: on a shared machine absolute numbers are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from benchmarks.daemon_vs_tls import (
    BURST,
    REPO,
    SELF,
    TWISTD,
    burst_ms,
    env,
    free_port,
    load,
    percentile,
    spawn,
    stop,
    tlsotp,
    wait_listening,
)
from benchmarks.verdict import done_means, median, per_repetition
from benchmarks.workers import WorkersOutcome, corun_cpu, corun_line, report, workers_mode
from benchmarks.workers import tree_cpu as workers_tree_cpu
from tlsotp.otp.store import CACHE_SIZE_KIB
from tlsotp.services.otp_authority import DATABASE_FILE

IDLE_CONNECTIONS = 500
#: The parts of the whole run after the daemons' tables that ``--skip`` can leave out.
SECTIONS = ("workers", "otp-store", "cross-worker-test", "refresh-test")
#: The cross-worker single-use test (issue 12's Done means), run by the whole run as it is in the suite.
CROSS_WORKER_TEST = ("tests.process.test_workers.WorkersTests."
                     "test_twenty_parallel_confirmations_of_one_code_over_two_workers_accept_exactly_one")
#: "No duplicated refreshes" with --workers 2: the suite's test that the CRL refresh and the
#: certificate renewal run once, in the supervisor, and reach every worker.
REFRESH_TEST = ("tests.process.test_workers.WorkersTests."
                "test_crl_refresh_and_renewal_run_once_in_the_supervisor_and_reach_every_worker")
COLUMNS = ("concurrent", "server", "server CPU us/session", "sessions/s", "p50 ms", "p99 ms", "load gen CPU us/session")


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants (the one count the
    workers mode uses too: ``benchmarks.workers.tree_cpu``)."""
    return workers_tree_cpu(pid)[0]


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())


def idle_rss_per_connection(pid: int, port: int, count: int) -> float:
    """Bytes of RSS the server's tree grows by per silent open connection."""
    before = tree_rss(pid)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        time.sleep(1.0)  # let the server accept and set each one up
        after = tree_rss(pid)
    finally:
        for s in sockets:
            s.close()
    return (after - before) / count


#: What each ``--key-type`` of the run means: the tlsotp suite its client offers (None: every
#: default suite, so the first, which both sides prefer, is negotiated) and how it is labelled.
KEY_TYPES: dict[str, tuple[str | None, str]] = {
    "ec-p256": (None, "EC P-256"),
    "rsa-2048": ("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384", "RSA-2048"),
}
DEFAULT_EC_SUITE = "TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384"


def crypto_floor_us(
    key_type: str = "ec-p256", suite: str = DEFAULT_EC_SUITE, rounds: int = 300, chain_check: bool = True
) -> float:
    """CPU us of the primitives a server must run per session of ``suite`` with ``key_type``
    certificates for the server and the client (the TTP's root is EC P-256, the ``ttp init``
    default), timed in one loop: the key agreement (an X25519 key pair and exchange, or one
    RSA-OAEP decryption for a key-transport suite), the server's CertificateVerify signature
    (ECDSA P-256 or RSA-PSS), two verifications (the client's CertificateVerify, with its key
    type, and its certificate's ECDSA signature by the root, which TLS checks on every handshake
    too), a dozen HMAC-SHA384 (the HKDF key schedule), four AES-256-GCM records of 100 bytes and
    a SHA-384 transcript. Nothing else: no parsing, no Python shell.

    ``chain_check=False`` leaves out the root's signature on the client's certificate: what the
    tlsotp server must do for a returning client, whose exact certificate its validated-chain
    cache already checked (the load generator reuses one certificate, so every session after
    the first is one); a TLS server checks it on every handshake. NaN for a suite that cannot run
    with ``key_type`` (an RSA key-transport suite with an EC certificate): its sessions fail, and
    the run with them."""
    import hashlib
    import hmac
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tlsotp.handshake.suites import KeyExchange, suite_named

    transport = suite_named(suite).key_exchange is KeyExchange.RSA_OAEP
    rsa_keys = key_type.startswith("rsa")
    if transport and not rsa_keys:
        return float("nan")  # no such session: RSA key transport needs an RSA certificate
    bits = int(key_type.split("-")[1]) if rsa_keys else 0
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

    def new_key() -> Any:
        return rsa.generate_private_key(65537, bits) if rsa_keys else ec.generate_private_key(ec.SECP256R1())

    def sign(key: Any, data: bytes) -> bytes:
        return key.sign(data, pss, hashes.SHA256()) if rsa_keys else key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verify(key: Any, signature: bytes, data: bytes) -> None:
        if rsa_keys:
            key.public_key().verify(signature, data, pss, hashes.SHA256())
        else:
            key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))

    server_key, client_key, root_key = new_key(), new_key(), ec.generate_private_key(ec.SECP256R1())
    client_signature = sign(client_key, b"t" * 48)
    cert_signature = root_key.sign(b"c" * 400, ec.ECDSA(hashes.SHA256()))
    transported = server_key.public_key().encrypt(os.urandom(32), oaep) if transport else b""
    peer_share = x25519.X25519PrivateKey.generate().public_key()
    aead, nonce, record = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(100)
    start = time.process_time()
    for _ in range(rounds):
        if transport:
            secret = server_key.decrypt(transported, oaep)
        else:
            share = x25519.X25519PrivateKey.generate()
            share.public_key().public_bytes_raw()
            secret = share.exchange(peer_share)
        sign(server_key, b"t" * 48)
        verify(client_key, client_signature, b"t" * 48)
        if chain_check:
            root_key.public_key().verify(cert_signature, b"c" * 400, ec.ECDSA(hashes.SHA256()))
        for _ in range(12):
            secret = hmac.new(secret, b"tls13 label", hashlib.sha384).digest()
        for _ in range(4):
            aead.encrypt(nonce, record, b"")
        hashlib.sha384(b"h" * 1500).digest()
    return (time.process_time() - start) / rounds * 1e6


def signing_floor_us(rounds: int = 200, gap: float = 0.0) -> float:
    """CPU us of what the TTP must compute per enrollment, timed in one loop: load a client's
    CSR (DER), verify its signature, and build and sign its certificate (EC P-256 root, the
    ``tlsotp ttp init`` default, and a P-256 client key). With ``gap`` (seconds), the process
    sleeps that long before each round and only the rounds are timed: the same work done the way
    a TTP serving one enrollment at a time does it, starting cold after an idle wait."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tlsotp.pki.csr import build_csr

    root_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr_der = build_csr(client_key, "alice.example").public_bytes(serialization.Encoding.DER)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsotp root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    spent = 0.0
    start = time.process_time()
    for _ in range(rounds):
        if gap:
            spent += time.process_time() - start
            time.sleep(gap)
            start = time.process_time()
        csr = x509.load_der_x509_csr(csr_der)
        assert csr.is_signature_valid
        (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(issuer).public_key(csr.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=7))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice.example")]), critical=False)
         .sign(root_key, hashes.SHA256()))
    spent += time.process_time() - start
    return spent / rounds * 1e6


def prepared_requests(tokens: list[str], first: int = 0) -> list[Any]:
    """One enrollment request per token, made before the clock starts (a fresh P-256 key, its
    CSR, a nonce and the token's proof each): to the TTP each is a full, new enrollment; only the
    load process's own key generation, reply check and file writes are left out of the run."""
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tlsotp.pki.csr import build_csr
    from tlsotp.pki.roles import Role
    from tlsotp.ttp import tokens as token_proofs
    from tlsotp.ttp import wire

    made = []
    for i, text in enumerate(tokens, first):  # the i-th token was minted for c{i}.example
        token, name = token_proofs.Token.parse(text), f"c{i}.example"
        csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name).public_bytes(serialization.Encoding.DER)
        nonce = secrets.token_bytes(wire.NONCE_BYTES)
        proof = token_proofs.enrollment_proof(token.mac_key(), token.token_id, Role.CLIENT, name, nonce, csr)
        made.append(wire.EnrollRequest(token.token_id, Role.CLIENT, name, nonce, csr, proof))
    return made


def enroll_main(argv: list[str]) -> None:
    """A load process for the TTP: enroll once per token, ``concurrency`` (default 1: one after
    another) at a time; one JSON line out."""
    import json

    from twisted.internet import defer, task

    from tlsotp.pki.credentials import RootPin
    from tlsotp.pki.roles import Role
    from tlsotp.services.enrollment import enroll

    ttp, fingerprint, base, tokens_json, *rest = argv
    concurrency = int(rest[0]) if rest else 1
    prepared = rest[1:2] == ["prepared"]
    tokens = json.loads(tokens_json)
    requests = prepared_requests(tokens) if prepared else []

    async def body(reactor: Any) -> None:
        from tlsotp.services.ttp_client import exchange
        from tlsotp.ttp import wire

        failures = 0
        todo = enumerate(tokens)  # shared: each runner takes the next token
        started = time.perf_counter()

        async def runner() -> None:
            nonlocal failures
            for i, token in todo:
                try:
                    if prepared:
                        reply = await exchange(reactor, ttp, requests[i], 30.0)
                        if not isinstance(reply, wire.Issued):
                            raise RuntimeError(f"not issued: {reply}")
                    else:
                        await enroll(reactor, ttp, data_dir=Path(base) / f"c{i}",
                                     pin=RootPin.from_fingerprint(fingerprint), token=token, name=f"c{i}.example",
                                     role=Role.CLIENT)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures += 1
                    print(f"enrollment {i} failed: {exc}", file=sys.stderr)

        await defer.gatherResults([defer.Deferred.fromCoroutine(runner()) for _ in range(concurrency)])
        print(json.dumps({"failed": failures, "seconds": time.perf_counter() - started}), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))


def enrollment_cpu_us(ttp_process: Any, ttp: str, fingerprint: str, work: Path, count: int, concurrency: int = 1,
                      prepared: bool = False) -> tuple[float, int]:
    """The TTP tree's CPU us per enrollment over ``count`` enrollments, ``concurrency`` at a time
    (real ones, or with ``prepared`` requests made before the clock: ``prepared_requests``), and
    the failures."""
    from benchmarks.ttp_enrollment import mint, run_enroll_load  # CPU per thread, exact: psutil ticks in 10 ms

    if count <= 0:  # --enrollments 0: the TTP's row is left out
        return float("nan"), 0
    tokens = mint(work / "ttp", "c", count)
    spent, failed, _, stderr = run_enroll_load(ttp_process.pid, ttp, fingerprint, tokens,
                                               work / f"enrolled-{concurrency}-{prepared}", concurrency, prepared)
    if failed:
        print(stderr, file=sys.stderr)
    return sum(spent.values()) / count / 1e3, failed


def insert_rows(connection: sqlite3.Connection, rng: Any, now: int, count: int, statuses: Sequence[str],
                hot_share: float | None = None) -> None:
    """``count`` OTP rows in one transaction (the connection in autocommit mode), as traffic
    leaves them: random ids and MACs, of 5,000 clients, issued within the last day, expiring in a
    minute, each a status drawn from ``statuses``; with ``hot_share``, that share of rows goes
    to one of 100 "hot" pairs of one client."""
    import os

    def pair() -> tuple[str, str]:
        if hot_share is not None and rng.random() < hot_share:
            return "client0.example", f"hot {rng.randrange(100)}"
        return f"client{rng.randrange(5000)}.example", f"pay {rng.randrange(10**9)} EUR"

    rows = [(os.urandom(16), *pair(), os.urandom(32), now - rng.randrange(86400), now + 60, rng.choice(statuses))
            for _ in range(count)]
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany("INSERT INTO otps (id, client, transaction_text, code_mac, issued_at, expires_at,"
                           " status) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    connection.execute("COMMIT")


def otp_store_us(work: Path, sizes: list[int], operations: int = 2000,
                 repetitions: int = 3) -> list[tuple[int, float, float, float, float, float, list[float], float]]:
    """Per table size: the store's own ``issue`` + ``confirm`` on a real SQLite file (opened
    through ``configure_connection``: WAL, synchronous=FULL, the daemon's schema and indexes),
    one BEGIN IMMEDIATE ... COMMIT per pair as the daemon's group worker runs them; returns
    (rows, wall us per pair without the COMMIT, CPU us per pair without it, the same CPU for new
    pairs and for re-requests of hot pairs alone, wall us with the COMMIT's fsync, CPU us per
    repetition, and the bound's CPU us: a bare INSERT of one row and an UPDATE of it by rowid,
    timed in the same slices on the same file, the least a store with these indexes does).
    Each size has a file of its own, filled first with rows of many (client, transaction) pairs
    in big transactions, most used or superseded, as months of traffic would leave it; one row
    in a hundred belongs to one of 100 "hot" pairs (about rows/10,000 earlier rows each). Half
    the timed pairs are new (client, transaction) pairs, half re-requests of a hot pair. The
    ``operations`` pairs per size are timed in ``repetitions`` slices, the sizes
    interleaved and their order reversed every other repetition (10k, 100k, 1M, then 1M, 100k,
    10k, ...), so a machine that speeds up or slows down during the run weighs on every size
    alike instead of on the last one timed."""
    import os
    import random
    import sqlite3

    from tlsotp.otp import store

    pepper = os.urandom(32)
    now = int(time.time())
    statuses = ("used",) * 6 + ("superseded",) * 3 + ("pending",)
    connections: dict[int, sqlite3.Connection] = {}
    rngs: dict[int, random.Random] = {}
    totals = {size: [0.0, 0.0, 0.0, 0.0, 0.0] for size in sizes}  # wall, CPU, new CPU, re-request CPU, with COMMIT
    per_rep: dict[int, list[float]] = {size: [] for size in sizes}
    timed = {size: 0 for size in sizes}
    bare = {size: 0.0 for size in sizes}
    counter = 0

    def pairs(size: int, count: int, measured: bool) -> None:
        nonlocal counter
        connection, rng = connections[size], rngs[size]
        cursor = connection.cursor()
        wall = cpu = 0.0
        kinds = [0.0, 0.0]
        began = time.perf_counter()
        for _ in range(count):
            counter += 1
            if counter % 2:
                client, transaction = "client0.example", f"hot {counter % 100}"
            else:
                client, transaction = f"client{rng.randrange(5000)}.example", f"bench {size} {counter}"
            t0, c0 = time.perf_counter(), time.process_time()
            connection.execute("BEGIN IMMEDIATE")
            issued = store.issue(cursor, pepper=pepper, client=client, transaction=transaction, digits=6,
                                 ttl_seconds=60, now=now)
            result = store.confirm(cursor, pepper=pepper, client=client, transaction=transaction, code=issued.code,
                                   max_attempts=3, now=now)
            wall += time.perf_counter() - t0
            spent = time.process_time() - c0
            cpu += spent
            kinds[counter % 2] += spent
            connection.execute("COMMIT")
            if result.status.name != "accepted":
                raise SystemExit(f"OTP store benchmark: confirmation answered {result.status.name}")
        if measured:
            total = totals[size]
            total[0] += wall
            total[1] += cpu
            total[2] += kinds[0]
            total[3] += kinds[1]
            total[4] += time.perf_counter() - began
            timed[size] += count
            per_rep[size].append(cpu / count * 1e6)
            bare[size] += bare_pairs(connection, rng, count)

    def bare_pairs(connection: sqlite3.Connection, rng: random.Random, count: int) -> float:
        # The bound: the least any store with this table and these indexes does per OTP, with
        # none of the rules' reads: insert one pending row at random keys, mark it used by rowid.
        cpu = 0.0
        for _ in range(count):
            row = (os.urandom(16), f"client{rng.randrange(5000)}.example", f"bare {rng.randrange(10**9)}",
                   os.urandom(32), now, now + 60)
            c0 = time.process_time()
            connection.execute("BEGIN IMMEDIATE")
            cursor = connection.execute("INSERT INTO otps (id, client, transaction_text, code_mac, issued_at, "
                                        "expires_at, status) VALUES (?, ?, ?, ?, ?, ?, 'pending')", row)
            connection.execute("UPDATE otps SET status = 'used' WHERE rowid = ?", (cursor.lastrowid,))
            cpu += time.process_time() - c0
            connection.execute("COMMIT")
        return cpu

    try:
        for size in sizes:
            connection = connections[size] = sqlite3.connect(work / f"otp-{size}.sqlite3", isolation_level=None)
            store.configure_connection(connection)
            rng = rngs[size] = random.Random(12)
            for filled in range(0, size, 100_000):
                # One row in a hundred goes to one of 100 "hot" pairs, re-requested again and again.
                insert_rows(connection, rng, now, min(100_000, size - filled), statuses, hot_share=0.01)
            # The fill's WAL is folded into the file first (the daemon's steady state checkpoints
            # as it goes), then a few unmeasured pairs warm the page cache.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pairs(size, 100, measured=False)
        for rep in range(repetitions):
            share = operations // repetitions + (1 if rep < operations % repetitions else 0)
            for size in (sizes if rep % 2 == 0 else sizes[::-1]):
                pairs(size, share, measured=True)
    finally:
        for connection in connections.values():
            connection.close()
    results = []
    for size in sizes:
        n, total = timed[size], totals[size]
        results.append((size, total[0] / n * 1e6, total[1] / n * 1e6, total[2] / (n / 2) * 1e6, total[3] / (n / 2) * 1e6,
                        total[4] / n * 1e6, per_rep[size], bare[size] / n * 1e6))
        row = results[-1]
        print(f"OTP store at {size:>9,} rows: issue+confirm {row[1]:6.0f} us wall, {row[2]:6.0f} us CPU "
              f"(new pairs {row[3]:.0f}, re-requests {row[4]:.0f}; per slice "
              f"{', '.join(f'{x:.0f}' for x in row[6])}); with COMMIT {row[5]:6.0f} us; bare INSERT+UPDATE "
              f"{row[7]:.0f} us CPU", flush=True)
    return results


def print_otp_store(results: list[tuple[int, float, float, float, float, float, list[float], float]], operations: int,
                    repetitions: int) -> None:
    print()
    print(f"{operations} issue+confirm pairs per size, one transaction each, half on new (client, transaction) "
          f"pairs, half re-requests of 100 pairs with about rows/10,000 earlier rows each; each size its own "
          f"file, timed in {repetitions} interleaved slices, the order reversed every other one; "
          f"{psutil.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    print()
    print(rst_table(("rows", "issue+confirm us (wall)", "us (CPU)", "new pair us (CPU)", "re-request us (CPU)",
                     "with COMMIT us (wall)", "bare INSERT+UPDATE us (CPU)"),
                    [(f"{n:,}", f"{w:.0f}", f"{c:.0f}", f"{a:.0f}", f"{b:.0f}", f"{f:.0f}", f"{bound:.0f}")
                     for n, w, c, a, b, f, _, bound in results]))
    first, last = results[0], results[-1]
    slices = ", ".join(f"{b / a:.2f}x" for a, b in zip(first[6], last[6]))
    print()
    print(f"issue+confirm at {last[0]:,} rows / at {first[0]:,} rows: {last[2] / first[2]:.2f}x (CPU; per "
          f"slice {slices}); the bound beside it, a bare INSERT + UPDATE by rowid of one row in the same "
          f"files: {last[7] / first[7]:.2f}x ({first[7]:.0f} -> {last[7]:.0f} us): what the B-trees' growth "
          f"costs any store with these indexes on this machine", flush=True)
    own_first, own_last = first[2] - first[7], last[2] - last[7]
    print(f"the store's own part, issue+confirm less that bound: {own_first:.0f} us at {first[0]:,} rows, "
          f"{own_last:.0f} us at {last[0]:,} ({own_last / own_first:.2f}x)", flush=True)


def suite_test(what: str, test: str) -> bool:
    """Run one of the suite's tests (``CROSS_WORKER_TEST``: two real workers, 20 parallel
    confirmations of one code, exactly one accepted; ``REFRESH_TEST``) as trial runs it; whether
    it passed."""
    import subprocess

    print(f"{what}: python -m twisted.trial {test}", flush=True)
    result = subprocess.run([sys.executable, "-m", "twisted.trial", test], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=300)
    print("\n".join(result.stdout.strip().splitlines()[-3:]), flush=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], file=sys.stderr)
    return result.returncode == 0


def fill_store(store_file: Path, rows: int) -> None:
    """Put ``rows`` settled OTP rows (used or superseded, of 5,000 clients, issued within the
    last day, not yet past retention) into a running server's store through a second
    connection (WAL: the server's own connection goes on; it re-reads the changed pages)."""
    import random

    if rows <= 0:
        return
    rng = random.Random(7)
    now = int(time.time())
    connection = sqlite3.connect(store_file, timeout=30, isolation_level=None)
    try:
        for start in range(0, rows, 50_000):
            insert_rows(connection, rng, now, min(50_000, rows - start), ("used", "superseded"))
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def soak(process: Any, port: int, work: Path, name: str, client: Path, suite: str | None, sessions: int,
         store_file: Path, fill: int, warmup: int = 0, samples: int = 10) -> tuple[list[tuple[int, int, int]], bool]:
    """The server tree's RSS and its OTP store's size (``store_file``'s pages) before and after
    each chunk of ``sessions // samples`` sessions at 50 concurrent, over ``warmup`` sessions and
    then ``sessions``, once ``fill`` rows were put into the store; returns the samples and whether
    every session completed."""
    chunk = max(sessions // samples, 1)
    samples += -(-warmup // chunk)  # the warm-up's chunks come first, sampled the same way
    fill_store(store_file, fill)

    def store_bytes() -> int:
        # The database's pages as a reader sees them (the WAL's newer pages included), read-only.
        if not store_file.exists():
            return 0
        reader = sqlite3.connect(f"file:{store_file}?mode=ro", uri=True)
        try:
            return int(reader.execute("PRAGMA page_count").fetchone()[0]) * int(reader.execute("PRAGMA page_size").fetchone()[0])
        finally:
            reader.close()

    points = [(0, tree_rss(process.pid), store_bytes())]
    ok = True
    for i in range(samples):
        result = load("tlsotp", work, port, name, 50, chunk, f"soak{i}", client=client, suite=suite)
        if result["failed"] or len(result["latencies"]) != chunk:
            ok = False
            print(f"soak chunk {i}: {result['failed']} failed: {result['failures']}", file=sys.stderr)
        points.append(((i + 1) * chunk, tree_rss(process.pid), store_bytes()))
        print(f"soak {points[-1][0]:>6} sessions  server RSS {points[-1][1] / 2**20:7.1f} MiB  "
              f"OTP store {points[-1][2] / 2**20:6.1f} MiB", flush=True)
    return points, ok


def plot_cpu(path: Path, bars: list[tuple[str, float, float, float]], title: str) -> str:
    """An SVG bar chart of server CPU per session (tlsotp, TLS, floor) per configuration."""
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "tlsotp"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.2))
    width = 0.27
    for offset, (label, index) in enumerate((("tlsotp-server", 1), ("Twisted TLS 1.3 mTLS", 2), ("crypto floor", 3))):
        xs = [i + (offset - 1) * width for i in range(len(bars))]
        values = [bar[index] for bar in bars]
        drawn = axes.bar(xs, values, width, label=label)
        axes.bar_label(drawn, labels=[f"{v:.0f}" for v in values], fontsize=7)
    axes.set_xticks(range(len(bars)), [bar[0] for bar in bars], fontsize=8)
    axes.set_ylabel("server CPU per session, us")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)
    return f"plot written: {path}"


def rst_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,50,200", help="comma-separated levels (EC key types)")
    parser.add_argument("--key-type", default="ec-p256,rsa-2048",
                        help=f"comma-separated certificate key types, each a server pair of its own: {', '.join(KEY_TYPES)}")
    parser.add_argument("--rsa-concurrency", default="50", help="comma-separated levels for the RSA key types")
    parser.add_argument("--suite", default=None,
                        help="the one tlsotp suite every client offers (default: all for EC, so the first is negotiated; "
                             "TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384 for RSA)")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per run (at 1 concurrent: a fifth)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="passed to tlsotp-server as --workers N")
    parser.add_argument("--enrollments", type=int, default=50, help="sequential TTP enrollments timed")
    parser.add_argument("--soak", type=int, default=10_000, help="sessions of the memory soak (0: none)")
    parser.add_argument("--soak-warmup", type=int, default=20_000,
                        help="sessions run (and sampled) before the soak, which fill the store's page cache")
    parser.add_argument("--soak-fill", type=int, default=100_000,
                        help="rows put into the soaked server's OTP store first, so that its page cache can fill "
                             "(a store smaller than the cache grows the cache with every session's row)")
    parser.add_argument("--plot", default=None, help="SVG of CPU per session (default docs/performance-cpu.svg; "
                                                     "--quick writes none unless given)")
    parser.add_argument("--otp-store", action="store_true",
                        help="only the OTP store benchmark: issue+confirm at --otp-store-rows rows")
    parser.add_argument("--otp-store-rows", default="10000,100000,1000000")
    parser.add_argument("--workers-scan", default="1,2",
                        help="the workers mode (benchmarks.workers) after the daemons: these --workers counts, "
                             "interleaved, under a saturating load")
    parser.add_argument("--workers-sessions", type=int, default=3000, help="sessions per workers-mode run")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated parts of the whole run to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="1 and 5 concurrent, 20 sessions, 1 repetition")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    # The store's pairs: 6,000 per size in 6 interleaved slices (2,000 in 3 moved the 1M/10k ratio
    # by 0.95x-1.40x between slices on this machine; the fill, not the pairs, takes the time).
    operations, slices = 6000, 2 * args.repetitions
    if args.quick:
        args.concurrency, args.rsa_concurrency, args.sessions, args.repetitions = "1,5", "5", 20, 1
        args.enrollments, args.soak, args.otp_store_rows, operations, slices = 3, min(args.soak, 200), "1000,10000", 200, 1
        args.soak_fill, args.soak_warmup = min(args.soak_fill, 1000), min(args.soak_warmup, 200)
        args.workers_sessions = min(args.workers_sessions, 100)
    elif args.plot is None:
        args.plot = str(Path(__file__).resolve().parent.parent / "docs" / "performance-cpu.svg")
    key_types = args.key_type.split(",")
    unknown = [k for k in key_types if k not in KEY_TYPES]
    if unknown:
        parser.error(f"unknown --key-type {', '.join(unknown)}: one of {', '.join(KEY_TYPES)}")
    args.skip = {part for part in args.skip.split(",") if part}
    if args.skip - set(SECTIONS):
        parser.error(f"unknown --skip {', '.join(sorted(args.skip - set(SECTIONS)))}: of {', '.join(SECTIONS)}")
    work = Path(tempfile.mkdtemp(prefix="tlsotp-bench-"))
    otp_sizes = [int(n) for n in args.otp_store_rows.split(",")]
    started = time.perf_counter()
    try:
        if args.otp_store:
            print_otp_store(otp_store_us(work, otp_sizes, operations, slices), operations, slices)
            print(f"run took {time.perf_counter() - started:.0f} s")
            return 0
        figures: dict[str, Any] = {}
        failed = run_daemons(args, key_types, work, started, figures)
        if "otp-store" not in args.skip:
            print()
            figures["otp_store"] = otp_store_us(work, otp_sizes, operations, slices)
            print_otp_store(figures["otp_store"], operations, slices)
        if "cross-worker-test" not in args.skip:
            print()
            figures["cross_worker_test"] = suite_test("cross-worker single-use test", CROSS_WORKER_TEST)
            failed = failed or not figures["cross_worker_test"]
        if "refresh-test" not in args.skip:
            print()
            figures["refresh_test"] = suite_test("refreshes with --workers 2", REFRESH_TEST)
            failed = failed or not figures["refresh_test"]
        elapsed = time.perf_counter() - started
        lines = done_means(figures, args, elapsed, failed)
        print()
        print("Issue 12's Done means, from this run (what was asked, what this run printed, and the bound the "
              "machine sets where there is one; benchmarks/verdict.py says how \"flat\" is read):")
        print()
        print(rst_table(("Done means", "asked", "this run", "verdict"), lines))
        print()
        print(f"{sum(1 for *_, v in lines if v == 'reached')} of {len(lines)} lines reached in this run")
        print()
        print(f"benchmark took {elapsed:.0f} s; exit status {1 if failed else 0}")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_daemons(args: argparse.Namespace, key_types: list[str], work: Path, started: float,
                figures: dict[str, Any]) -> bool:
    """Everything that needs the TTP: the daemons beside TLS, the memory soak, the TTP's
    enrollment and the workers mode; their tables printed, their figures put into ``figures``
    (for ``benchmarks.verdict``). Whether any of it failed."""
    processes: list[Any] = []
    failed = False
    try:
        match = re.search(r"sha256:[0-9a-f]{64}", tlsotp("ttp", "init", "--data-dir", str(work / "ttp")))
        assert match is not None
        fingerprint = match.group(0)

        def token(name: str, role: str) -> str:
            return tlsotp("ttp", "token", "--data-dir", str(work / "ttp"), "--name", name, "--role", role).strip().splitlines()[-1]

        ttp_port = free_port()
        ttp = f"tcp:host=127.0.0.1:port={ttp_port}"
        processes.append(spawn([*TWISTD, "-n", "--pidfile", "", "--logfile", str(work / "ttp.log"), "tlsotp-ttp",
                                "--data-dir", str(work / "ttp"), "--listen", f"tcp:{ttp_port}:interface=127.0.0.1"],
                               work / "ttp.out"))
        wait_listening(processes[-1], ttp_port, "the TTP")
        workers = ["--workers", str(args.workers)] if args.workers is not None else []
        # (key type, "tlsotp" | "tls") -> (process, port, server name, client data dir, suite offered)
        targets: dict[tuple[str, str], tuple[Any, int, str, Path, str | None]] = {}
        for key_type in key_types:
            bank_port, tls_port = free_port(), free_port()
            bank_name, tls_name, client_name = f"bank-{key_type}.example", f"tlsbank-{key_type}.example", f"alice-{key_type}.example"
            bank = spawn([
                *TWISTD, "-n", "--pidfile", "", "--logfile", str(work / f"server-{key_type}.log"), "tlsotp-server",
                "--data-dir", str(work / f"server-{key_type}"), "--name", bank_name,
                "--listen", f"tcp:{bank_port}:interface=127.0.0.1:backlog=1024", "--ttp", ttp,
                "--ca-fingerprint", fingerprint, "--token", token(bank_name, "server"), "--key-type", key_type,
                "--max-connections", "2048", "--max-per-address", "2048", *workers,
            ], work / f"server-{key_type}.out")
            processes.append(bank)
            for data_dir, name, role in ((work / f"tls-server-{key_type}", tls_name, "server"),
                                         (work / f"client-{key_type}", client_name, "client")):
                tlsotp("enroll", "--data-dir", str(data_dir), "--ttp", ttp, "--ca-fingerprint", fingerprint,
                       "--token", token(name, role), "--name", name, "--role", role, "--key-type", key_type)
            tlsotp("crl", "--data-dir", str(work / f"client-{key_type}"), "--ttp", ttp)
            tls = spawn([*SELF, "--tls-server", str(work / f"tls-server-{key_type}"), str(tls_port)],
                        work / f"tls-server-{key_type}.out")
            processes.append(tls)
            wait_listening(bank, bank_port, f"the tlsotp server ({key_type})")
            wait_listening(tls, tls_port, f"the TLS server ({key_type})")
            suite = args.suite or KEY_TYPES[key_type][0]
            client = work / f"client-{key_type}"
            targets[(key_type, "tlsotp")] = (bank, bank_port, bank_name, client, suite)
            targets[(key_type, "tls")] = (tls, tls_port, tls_name, client, None)
        # tlsotp/floor uses the returning client's floor (one verify), which is what the server
        # must do for the load generator's sessions; the first-contact floor is printed beside it.
        floors, args.first_contact_floors = {}, {}
        for k in key_types:
            floor_suite, rounds = args.suite or KEY_TYPES[k][0] or DEFAULT_EC_SUITE, 100 if k.startswith("rsa") else 300
            floors[k] = crypto_floor_us(k, floor_suite, rounds, chain_check=False)
            args.first_contact_floors[k] = crypto_floor_us(k, floor_suite, rounds)
        # What a bare Twisted server spends per connection (accept, one netstring in, one reply out,
        # close): with the floor, the least any server on Twisted spends per session, printed beside it.
        from benchmarks.ttp_enrollment import tcp_bound_us

        args.bare_tcp_us = tcp_bound_us(300, hop=False)
        enrollment = enrollment_cpu_us(processes[0], ttp, fingerprint, work, args.enrollments)
        # And with 16 in flight from prepared requests: the TTP's group commit at work.
        concurrent_enrollments = args.enrollments * 4
        concurrent = enrollment_cpu_us(processes[0], ttp, fingerprint, work, concurrent_enrollments, 16, prepared=True)
        for (_, lost), count in ((enrollment, args.enrollments), (concurrent, concurrent_enrollments)):
            if lost:
                failed = True
                print(f"TTP enrollment: {lost} of {count} failed", file=sys.stderr)
        enrollment_floor = signing_floor_us()
        # Memory first, on servers that have run no session yet: after a load, the connections'
        # memory would come from heap already freed by earlier sessions and show as ~0.
        extras = {}
        for target, (process, port, *_) in targets.items():
            extras[target] = (idle_rss_per_connection(process.pid, port, IDLE_CONNECTIONS), burst_ms(port, BURST))
        wire: dict[tuple[str, str], tuple[float, float]] = {}
        negotiated: dict[tuple[str, str], str] = {}
        for (key_type, kind), (_, port, name, client, suite) in targets.items():
            load(kind, work, port, name, 5, 20, "warm", client=client, suite=suite)  # imports, first database pages
            # Bytes on the wire, counted by the load generator below TLS for both: a run of its
            # own, as counting costs the load generator a little CPU.
            counted = load(kind, work, port, name, 1, 20, "bytes", client=client, suite=suite, count_bytes=True)
            done = len(counted["latencies"])
            if counted["failed"] or done != 20:
                failed = True
                print(f"{kind} ({key_type}) bytes run: {counted['failed']} failed: {counted['failures']}", file=sys.stderr)
            wire[(key_type, kind)] = (counted["sent"] / max(done, 1), counted["received"] / max(done, 1))
            negotiated[(key_type, kind)] = counted["negotiated"] or "?"
            if kind == "tlsotp" and (counted["own_sent"], counted["own_received"]) != (counted["sent"], counted["received"]):
                failed = True
                print(f"tlsotp ({key_type}) bytes: the wire counted {counted['sent']}/{counted['received']}, the client's "
                      f"ChannelStats {counted['own_sent']}/{counted['own_received']}", file=sys.stderr)
        rsa_levels = [int(c) for c in args.rsa_concurrency.split(",")]
        ec_levels = [int(c) for c in args.concurrency.split(",")]
        levels = {k: rsa_levels if k.startswith("rsa") else ec_levels for k in key_types}
        rows: list[dict[str, Any]] = []
        for rep in range(1, args.repetitions + 1):
            for key_type in key_types:
                for level in levels[key_type]:
                    sessions = max(args.sessions // 5, 10) if level == 1 else args.sessions
                    for kind in ("tlsotp", "tls"):
                        process, port, name, client, suite = targets[(key_type, kind)]
                        before = tree_cpu(process.pid)
                        result = load(kind, work, port, name, level, sessions, f"{rep}-{level}", client=client, suite=suite)
                        after = tree_cpu(process.pid)
                        done = len(result["latencies"])
                        if result["failed"] or done != sessions:
                            failed = True
                            print(f"{kind} ({key_type}) at {level} run {rep}: {result['failed']} failed: {result['failures']}",
                                  file=sys.stderr)
                        rows.append({
                            "key": key_type, "kind": kind, "rep": rep, "level": level, "sessions": done,
                            "cpu_us": (after - before) / max(done, 1) * 1e6, "rate": done / result["elapsed"],
                            "p50": percentile(result["latencies"], 50) * 1e3 if done else float("nan"),
                            "p99": percentile(result["latencies"], 99) * 1e3 if done else float("nan"),
                            "load_cpu_us": result["cpu"] / max(done, 1) * 1e6,
                        })
                        r = rows[-1]
                        print(f"run {rep} {key_type:<8} {level:>3} concurrent {kind:<6} {done:>5} sessions  server CPU "
                              f"{r['cpu_us']:6.0f} us/session  {r['rate']:6.1f}/s  p50 {r['p50']:7.1f} ms  "
                              f"p99 {r['p99']:7.1f} ms  load gen CPU {r['load_cpu_us']:6.0f} us/session", flush=True)
        points: list[tuple[int, int, int]] = []
        if args.soak:
            process, port, name, client, suite = targets[(key_types[0], "tlsotp")]
            points, ok = soak(process, port, work, name, client, suite, args.soak,
                              work / f"server-{key_types[0]}" / DATABASE_FILE, args.soak_fill, args.soak_warmup)
            failed = failed or not ok
        print()
        print(render(rows, levels, extras, wire, negotiated, floors, args, time.perf_counter() - started))
        if points:
            print()
            print(render_soak(points, key_types[0], args.soak_fill, args.soak_warmup))
        print()
        print(rst_table(("TTP enrollment", "TTP CPU us/enrollment", "signing floor us", "ratio"), [
            (f"{args.enrollments} sequential, EC P-256", f"{enrollment[0]:.0f}", f"{enrollment_floor:.0f}",
             f"{enrollment[0] / enrollment_floor:.2f}x"),
            (f"{concurrent_enrollments} at 16 concurrent, prepared", f"{concurrent[0]:.0f}", f"{enrollment_floor:.0f}",
             f"{concurrent[0] / enrollment_floor:.2f}x"),
        ]))
        print()
        if args.plot:
            bars = [(f"{KEY_TYPES[k][1]}, {level} conc.", median_of(rows, k, "tlsotp", level), median_of(rows, k, "tls", level),
                     floors[k]) for k in key_types for level in levels[k]]
            print(plot_cpu(Path(args.plot), bars, f"server CPU per session, medians of {args.repetitions} interleaved "
                                                  f"repetition(s), one run of benchmarks.server"))
        else:
            print("plot skipped: --quick without --plot")
        figures.update(rows=rows, levels=levels, floors=floors, extras=extras, points=points,
                       ttp=[(f"{args.enrollments} sequential", enrollment[0]), (f"{concurrent_enrollments} at 16 "
                            "concurrent, prepared", concurrent[0])], ttp_floor=enrollment_floor)
        if "workers" not in args.skip:
            for process in processes[1:]:  # only the TTP goes on: a quiet machine for the workers
                stop(process)
            outcome, figures["corun"] = run_workers_mode(work / "workers", work / "ttp", ttp, fingerprint, args)
            figures.update(workers=outcome.runs, lock_waits=outcome.lock_waits, worker_bursts=outcome.bursts)
            failed = failed or outcome.failed
        return failed
    finally:
        for process in reversed(processes):
            stop(process)


def run_workers_mode(work: Path, ttp_dir: Path, ttp: str, fingerprint: str, args: argparse.Namespace
                     ) -> tuple[WorkersOutcome, tuple[float, float]]:
    """``benchmarks.workers``' burst and saturating rounds (no paced ones) for
    ``--workers-scan``, printed with its medians, then its co-run probe (the machine's own
    contention, with nothing shared): what it measured, and the probe's CPU alone and beside a
    copy per core."""
    import os

    work.mkdir()
    print()
    print(f"workers mode (benchmarks.workers): --workers {args.workers_scan}, interleaved, saturating load")
    options = argparse.Namespace(workers=args.workers_scan, sessions=args.workers_sessions,
                                 repetitions=args.repetitions, concurrency=50, load_processes=os.cpu_count() or 1,
                                 paced=0.0)
    outcome = workers_mode(work, ttp_dir, ttp, fingerprint, options)
    print()
    print(f"medians of {args.repetitions} interleaved repetition(s), saturating load:")
    report([int(n) for n in args.workers_scan.split(",")], outcome.runs)
    corun = corun_cpu()
    print(corun_line(*corun), flush=True)
    return outcome, corun


def median_of(rows: list[dict[str, Any]], key_type: str, kind: str, level: int, field: str = "cpu_us") -> float:
    """``benchmarks.verdict.median`` for a configuration that was run: none is an error here."""
    value = median(rows, key_type, kind, level, field)
    if value is None:
        raise statistics.StatisticsError(f"no run of {kind} ({key_type}) at {level} concurrent")
    return value


def render_soak(points: list[tuple[int, int, int]], key_type: str, fill: int, warmup: int = 0) -> str:
    """The soak's table, and the growth per 1,000 sessions from the end of the warm-up (or of the
    first chunk, which fills the caches and the allocator's pools) to the end, over the soak's
    second half, and over the whole run; beside it the bound of what the OTP store's own page
    cache may add: SQLite keeps up to ``CACHE_SIZE_KIB`` of the file's pages, filled as sessions
    touch them, so RSS may grow by that much before it levels off. A leak is what goes on growing
    past it."""
    start = next((i for i, (n, _, _) in enumerate(points) if n >= warmup), 0) if warmup else 1
    (first_n, first_rss, _), (last_n, last_rss, last_store) = points[start], points[-1]
    half_n, half_rss, _ = points[(start + len(points) - 1) // 2]

    def per_1000(rss: int, n: int, since_rss: int, since_n: int) -> float:
        return (rss - since_rss) / max(n - since_n, 1) * 1000 / 1024

    return "\n".join([
        f"the soak began once {fill:,} settled rows were put into the server's OTP store; its first {warmup:,} "
        "sessions are the warm-up that fills the store's page cache" if warmup else
        f"the soak began once {fill:,} settled rows were put into the server's OTP store", "",
        rst_table(("sessions", f"tlsotp-server RSS MiB ({KEY_TYPES[key_type][1]}, 50 concurrent)", "OTP store file MiB"),
                  [(f"{n:,}", f"{rss / 2**20:.1f}", f"{size / 2**20:.1f}") for n, rss, size in points]), "",
        f"RSS growth per 1,000 sessions: {per_1000(last_rss, last_n, first_rss, first_n):.1f} KiB from {first_n:,} to "
        f"{last_n:,} sessions; {per_1000(last_rss, last_n, half_rss, half_n):.1f} KiB from {half_n:,} to {last_n:,}; "
        f"{per_1000(last_rss, last_n, points[0][1], 0):.1f} KiB from 0 (the first {first_n:,} fill caches and pools)",
        f"bound beside it: the OTP store's page cache holds up to {CACHE_SIZE_KIB:,} KiB of its "
        f"{last_store / 2**20:.1f} MiB file, filled as sessions touch its pages, so RSS may grow by up to that much "
        f"before it levels off; it grew {(last_rss - points[0][1]) / 2**20:.1f} MiB in this soak",
    ])


def render(rows: list[dict[str, Any]], levels: dict[str, list[int]], extras: dict[tuple[str, str], tuple[float, float]],
           wire: dict[tuple[str, str], tuple[float, float]], negotiated: dict[tuple[str, str], str], floors: dict[str, float],
           args: argparse.Namespace, elapsed: float) -> str:
    label = {"tlsotp": "tlsotp-server", "tls": "Twisted TLS 1.3 mTLS"}
    table: list[tuple[str, ...]] = []
    ratios: list[str] = []
    for key_type, key_levels in levels.items():
        for level in key_levels:
            for kind in ("tlsotp", "tls"):
                values = {k: median_of(rows, key_type, kind, level, k) for k in ("cpu_us", "rate", "p50", "p99", "load_cpu_us")}
                table.append((KEY_TYPES[key_type][1], str(level), label[kind], f"{values['cpu_us']:.0f}", f"{values['rate']:.1f}",
                              f"{values['p50']:.1f}", f"{values['p99']:.1f}", f"{values['load_cpu_us']:.0f}"))
            mine, theirs = median_of(rows, key_type, "tlsotp", level), median_of(rows, key_type, "tls", level)
            per_rep = per_repetition(rows, key_type, level)
            ratios.append(f"- {KEY_TYPES[key_type][1]}, {level} concurrent: server CPU per session tlsotp/TLS "
                          f"{mine / theirs:.2f}x (medians; per repetition {', '.join(f'{r:.2f}x' for r in per_rep)}), "
                          f"tlsotp/floor {mine / floors[key_type]:.2f}x, TLS/floor {theirs / floors[key_type]:.2f}x; "
                          f"tlsotp/bound {mine / (floors[key_type] + args.bare_tcp_us):.2f}x")
    floor_lines = [f"- {KEY_TYPES[k][1]}: {args.suite or KEY_TYPES[k][0] or DEFAULT_EC_SUITE} "
                   f"({'1 RSA-OAEP decryption' if (args.suite or KEY_TYPES[k][0] or '').startswith('TLSOTP_RSA_OAEP') else 'X25519'}, "
                   f"1 {'RSA-PSS' if k.startswith('rsa') else 'ECDSA'} sign, 1 verify, HKDF, AES-GCM records; one loop): "
                   f"{floors[k]:.0f} us/session for a returning client (its certificate already validated: the ratio's "
                   f"floor); {args.first_contact_floors[k]:.0f} us/session at first contact (2 verify, as TLS does each time)"
                   for k in levels]
    floor_lines += [f"- The bound beside it: a bare Twisted TCP server (accept, one ~700-byte netstring in, one ~1100-byte "
                    f"reply out, close; no crypto, no store, no log) spends {args.bare_tcp_us:.0f} us per connection here; "
                    + "; ".join(f"{KEY_TYPES[k][1]} floor + that = {floors[k] + args.bare_tcp_us:.0f} us = "
                                f"{(floors[k] + args.bare_tcp_us) / floors[k]:.2f}x its floor" for k in levels)
                    + ": the least a server on Twisted spends per session of that suite, before any handshake code, "
                      "OTP store or log line of its own"]
    memory = [(KEY_TYPES[k][1], label[kind], f"{rss / 1024:.1f}", f"{ms:.0f}") for (k, kind), (rss, ms) in extras.items()]
    bytes_rows = [(KEY_TYPES[k][1], label[kind], negotiated[(k, kind)], f"{sent:.0f}", f"{received:.0f}", f"{sent + received:.0f}")
                  for (k, kind), (sent, received) in wire.items()]
    return "\n".join([
        f"{args.repetitions} interleaved repetition(s), {args.sessions} sessions per run ({max(args.sessions // 5, 10)} at 1 "
        f"concurrent), certificates from one TTP (EC P-256 root), server CPU over its process tree; medians; "
        f"{psutil.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}; "
        f"sessions done at {elapsed:.0f} s", "",
        "Each load process keeps one ClientSettings (tlsotp) or one TLS context (TLS), as embedding code would: "
        "the tlsotp client validates the server's chain once per process and then checks its times and the CRL "
        "per session; every session is a new TCP connection and a full, fresh handshake for the server.", "",
        rst_table(("certificates", *COLUMNS), table), "",
        "Crypto floor (the server's primitives per session, with the client's certificate of the same key type):",
        "",
        *floor_lines, "",
        *ratios, "",
        rst_table(("certificates", "server", "negotiated", "client->server bytes/session", "server->client bytes/session", "total"),
                  bytes_rows), "",
        rst_table(("certificates", "server", f"RSS per idle connection KiB ({IDLE_CONNECTIONS} open)",
                   f"{BURST} connects in a burst, ms until all accepted"), memory),
    ])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--enroll-load"]:
        enroll_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
