"""``tlsotp demo``: the TTP, the server and the client in one process, with the trace on.

Everything runs for real — a CA in a temporary directory, the TTP and the server listening on
free loopback ports, token enrollment over TCP, a CRL fetch, the handshake — only in one
process, so that one command shows the whole protocol end to end. The TTP and the server are
the daemons' own services, built from their settings (``build_service``) as an embedder would.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any, TextIO, cast

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage

from tlsotp.commands.client import DEFAULT_TRANSACTION, ClientCommandOptions
from tlsotp.commands.common import Command
from tlsotp.handshake import DEFAULT_SUITES, SignatureKind, suite_named
from tlsotp.pki.keys import KeyType, parse_key_type
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow
from tlsotp.services.bank_service import BankServerSettings
from tlsotp.services.bank_service import build_service as build_server_service
from tlsotp.services.enrollment import RootPin
from tlsotp.services.ttp_service import TTPSettings
from tlsotp.services.ttp_service import build_service as build_ttp_service
from tlsotp.ttp.ca import init_ca, open_store

SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"
LOOPBACK = "tcp:0:interface=127.0.0.1"


def mint(ttp_dir: Path, name: str, role: Role) -> str:
    store = open_store(ttp_dir)
    try:
        return str(store.mint_token(name, role, ttl=datetime.timedelta(minutes=10), now=utcnow()))
    finally:
        store.close()


def demo_log_observer(out: TextIO) -> ILogObserver:
    """Shows what the TTP and the server log, indented, between the client's trace lines."""

    def observe(event: LogEvent) -> None:
        namespace = str(event.get("log_namespace", ""))
        if not namespace.startswith(("tlsotp.ttp", "tlsotp.services.bank_server")):
            return
        party = "TTP" if namespace.startswith("tlsotp.ttp") else "server"
        out.write(f"{'':14}({party} log) {formatEvent(event)}\n")

    return cast(ILogObserver, observe)


def port_of(listening_port: Any) -> int:
    return int(listening_port.getHost().port)


class DemoOptions(Command):
    """Run a TTP, a server and a client in one process on loopback, and show the handshake."""

    synopsis = "[--suite NAME] [--key-type TYPE] [--transaction TEXT] [--keep DIR]"
    optParameters: list[list[Any]] = [
        ["suite", None, None, "Cipher suite to use (default: the strongest the server's key allows)."],
        ["key-type", None, None, "Key type of server and client (default: ec-p256, or rsa-2048 for an RSA suite)."],
        ["transaction", None, DEFAULT_TRANSACTION, "The transaction the OTP authorises."],
        ["keep", None, None, "Keep the data dirs in this (new) directory instead of a temporary one."],
    ]

    def postOptions(self) -> None:
        try:
            self["suite"] = suite_named(self["suite"]) if self["suite"] else None
            if self["key-type"]:
                self["key-type"] = parse_key_type(self["key-type"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
        if self["key-type"] is None:
            rsa = self["suite"] is not None and self["suite"].authentication is SignatureKind.RSA_PSS
            self["key-type"] = KeyType.RSA_2048 if rsa else KeyType.EC_P256

    def execute(self, reactor: Any, out: TextIO) -> Deferred[int]:
        return Deferred.fromCoroutine(self._demo(reactor, out))

    async def _demo(self, reactor: Any, out: TextIO) -> int:
        if self["keep"]:
            workdir = Path(self["keep"])
            workdir.mkdir(parents=True)
        else:
            workdir = Path(tempfile.mkdtemp(prefix="tlsotp-demo-"))
        services: list[Any] = []
        observer = demo_log_observer(out)
        globalLogPublisher.addObserver(observer)
        try:
            return await self._run(reactor, out, workdir, services)
        finally:
            for service in reversed(services):
                await service.stopService()
            globalLogPublisher.removeObserver(observer)
            if not self["keep"]:
                shutil.rmtree(workdir, ignore_errors=True)

    async def _run(self, reactor: Any, out: TextIO, workdir: Path, services: list[Any]) -> int:
        key_type: KeyType = self["key-type"]
        ttp_dir = workdir / "ttp"
        ca = init_ca(ttp_dir, key_type=KeyType.EC_P256, subject="tlsotp demo root", days=1)
        out.write(f"== TTP: new CA in {ttp_dir}, root {ca.fingerprint}\n")
        ttp = build_ttp_service(TTPSettings(data_dir=ttp_dir, ca=ca, listen=LOOPBACK), reactor)
        ttp.startService()
        services.append(ttp)
        ttp_endpoint = f"tcp:host=127.0.0.1:port={port_of(ttp.port)}"
        out.write(f"== TTP: listening on {ttp_endpoint}; tokens minted for {SERVER_NAME} and {CLIENT_NAME}\n")

        server = build_server_service(
            BankServerSettings(
                data_dir=workdir / "server", name=SERVER_NAME, listen=LOOPBACK, ttp=ttp_endpoint,
                pin=RootPin.from_fingerprint(ca.fingerprint), token=mint(ttp_dir, SERVER_NAME, Role.SERVER),
                key_type=key_type,
            ),
            reactor,
        )
        server.startService()
        services.append(server)
        await server.ready
        server_endpoint = f"tcp:host=127.0.0.1:port={port_of(server.port)}"
        out.write(f"== server: enrolled as {SERVER_NAME} ({key_type.value}), listening on {server_endpoint}\n")

        suites = [self["suite"]] if self["suite"] else list(DEFAULT_SUITES)
        pin = ["--ttp", ttp_endpoint, "--ca-fingerprint", ca.fingerprint, "--key-type", key_type.value]
        client_options = ClientCommandOptions()  # type: ignore[no-untyped-call]
        client_options.parseOptions([
            "--data-dir", str(workdir / "client"), "--name", CLIENT_NAME,
            "--token", mint(ttp_dir, CLIENT_NAME, Role.CLIENT), *pin,
            "--server", server_endpoint, "--server-name", SERVER_NAME,
            "--suites", ",".join(s.name for s in suites), "--transaction", self["transaction"], "--trace",
        ])
        out.write(f"== client: enrolling as {CLIENT_NAME}, fetching the CRL, then the handshake:\n\n")
        code = await client_options.execute(reactor, out)
        if self["keep"]:
            out.write(f"\n== files kept in {workdir}\n")
        return code
