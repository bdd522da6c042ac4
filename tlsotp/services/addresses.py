"""Network addresses as log lines show them: ``host:port`` for TCP, the address itself otherwise."""

from __future__ import annotations

from twisted.internet.interfaces import IAddress


def describe_address(address: IAddress | None) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
