"""One client run, as the ``tlsotp client`` command and the client daemon perform it.

enroll if needed -> fetch and verify the CRL -> connect -> handshake -> request -> verify.
Each step is awaited in turn; any refusal surfaces as one exception with one line of text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from cryptography import x509
from twisted.logger import Logger

from tlsotp.commands.client_options import ClientOptions
from tlsotp.commands.trace import TracePrinter
from tlsotp.pki.roles import Role
from tlsotp.services.credentials import obtain_credentials
from tlsotp.services.enrollment import fetch_crl
from tlsotp.services.otp_client import ClientSettings, SessionResult, confirm_otp, request_otp

log = Logger()


@dataclass(frozen=True)
class ClientRun:
    result: SessionResult
    crl_checked: bool


async def run_client(reactor: Any, options: ClientOptions, trace_out: TextIO = sys.stdout) -> ClientRun:
    credentials = await obtain_credentials(
        reactor, data_dir=options["data-dir"], ttp=options["ttp"], pin=options["pin"], token=options["token"],
        name=options["name"], role=Role.CLIENT, key_type=options["key-type"], timeout=options["timeout"],
    )
    crl: x509.CertificateRevocationList | None = None
    if options["no-crl-check"]:
        log.warn("CRL check disabled by --no-crl-check: a revoked server certificate would be accepted")
    else:
        crl = await fetch_crl(
            reactor, options["ttp"], pin=credentials.root, data_dir=options["data-dir"], timeout=options["timeout"]
        )
    settings = ClientSettings(
        key=credentials.key,
        chain=credentials.chain,
        root=credentials.root,
        server_name=options["server-name"],
        crl=crl,
        suites=options.suites,
        timeout_seconds=options["timeout"],
        observer=TracePrinter(trace_out) if options["trace"] else None,
    )
    if options["confirm"] is not None:
        result = await confirm_otp(reactor, options["server"], settings, options["transaction"], options["confirm"])
    else:
        result = await request_otp(reactor, options["server"], settings, options["transaction"])
    return ClientRun(result, crl is not None)
