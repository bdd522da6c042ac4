"""The client's options, shared by ``tlsotp client`` and ``twistd -n tlsotp-client``."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from tlsotp.commands.party_options import PartyOptions
from tlsotp.otp.messages import check_code, check_transaction
from tlsotp.pki.names import check_dns_name

DEFAULT_TRANSACTION = "Rs 1,00,000 to your friend's account"


class ClientOptions(PartyOptions):
    synopsis = "--data-dir DIR --server-name NAME [--server ENDPOINT] [--name NAME --token T (--ca-fingerprint F | --ca-cert FILE)] ..."
    optFlags: list[list[Any]] = [
        ["no-crl-check", None, "Do not fetch the TTP's CRL before connecting (revoked servers go unnoticed!)."],
        ["trace", None, "Print each handshake message as it goes, and what the session cost."],
    ]
    optParameters: list[list[Any]] = [
        ["name", "n", None, "This client's DNS-style name, as minted in its token (needed to enroll)."],
        ["server", "s", "tcp:host=127.0.0.1:port=7001", "Endpoint string of the server."],
        ["server-name", None, None, "The name the server's certificate must carry (e.g. bank.example)."],
        ["transaction", None, DEFAULT_TRANSACTION, "The transaction the OTP authorises."],
        ["confirm", None, None, "Confirm this OTP for the transaction instead of requesting one."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if not self["server-name"]:
            raise usage.UsageError("--server-name is required: the name the server must prove")
        try:
            self["server-name"] = check_dns_name(self["server-name"])
            if self["name"] is not None:
                self["name"] = check_dns_name(self["name"])
            check_transaction(self["transaction"])
            if self["confirm"] is not None:
                check_code(self["confirm"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None
