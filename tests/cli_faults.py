"""A ``tlsotp`` subcommand that fails in every way a bug can, for the no-traceback tests.

Not a mock: the real ``tlsotp.commands.main.main`` runs it in a subprocess (see ``run_faulty``), exactly as
it runs the real subcommands. No tests here.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tlsotp.commands import common
from tlsotp.commands import main as cli

MODES = ("execute", "run", "callback", "lost-deferred", "options")


class FaultyOptions(common.Command):
    optParameters = [["mode", None, "execute", "how to fail: " + ", ".join(MODES)]]

    def postOptions(self) -> None:
        if self["mode"] == "options":
            raise RuntimeError("bug while parsing options")

    def run(self, reactor: Any, out: TextIO | None = None, err: TextIO | None = None) -> Deferred[int]:
        if self["mode"] == "run":
            raise KeyError("bug in run")
        return super().run(reactor, out, err)

    def execute(self, reactor: Any, out: TextIO) -> Deferred[int]:
        mode = self["mode"]
        if mode == "execute":
            raise ZeroDivisionError("bug in execute")
        if mode == "callback":
            # An exception in a reactor callback: Twisted logs it as "Unhandled Error".
            def bug() -> None:
                raise LookupError("bug in a reactor callback")

            reactor.callLater(0, bug)
        else:
            # A failed Deferred that nobody handles: logged when it is garbage-collected.
            lost: Deferred[None] = Deferred()
            lost.errback(OverflowError("bug in a forgotten Deferred"))
            del lost
            gc.collect()
        return deferLater(reactor, 0.2, lambda: common.EXIT_OK)


def main() -> None:
    cli.SUBCOMMANDS.append(common.Subcommand("faulty", None, "tests.cli_faults:FaultyOptions", "Fail on purpose."))
    cli.main(sys.argv[1:])


if __name__ == "__main__":
    main()
