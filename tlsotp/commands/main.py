"""The ``tlsotp`` command: a table of subcommands, each an Options class that knows how to run.

Adding a subcommand is one line in ``SUBCOMMANDS``: its name, an optional one-letter shortcut,
``"module:Class"`` of its Options class (imported only when that subcommand is chosen), and a
one-line description. The class is a ``usage.Options`` with::

    def run(self, reactor, out=None, err=None) -> Deferred[int]

which returns the exit code and reports its own refusals as one line on ``err``. Subclassing
``Command`` (from ``tlsotp.commands.common``, where the shared bases live) gives that for free:
implement ``execute(reactor, out)`` and raise on failure. A group of subcommands (like
``tlsotp ttp``) subclasses ``CommandGroup`` with its own table.

Exit codes: 0 success; 1 refused or failed (one line on stderr); 2 usage error (one line on
stderr). Never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import react
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure

from tlsotp.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandGroup,
    Subcommand,
    UsageFailure,
    command_path,
    describe_error,
)

__all__ = ["SUBCOMMANDS", "TlsotpOptions", "main", "parse"]

SUBCOMMANDS: list[Subcommand] = [
    Subcommand("ttp", None, "tlsotp.commands.ttp_admin:TTPOptions", "Operate the TTP: init, token(s), withdraw, revoke, list, backup."),
    Subcommand("enroll", None, "tlsotp.commands.requester:EnrollOptions", "Enroll with the TTP using a token."),
    Subcommand("renew", None, "tlsotp.commands.requester:RenewOptions", "Renew this party's certificate."),
    Subcommand("crl", None, "tlsotp.commands.requester:CRLOptions", "Fetch and verify the TTP's CRL."),
    Subcommand("client", None, "tlsotp.commands.client:ClientCommandOptions", "Get (or confirm) an OTP from the server."),
    Subcommand("demo", None, "tlsotp.commands.demo:DemoOptions", "Run TTP, server and client in one process, with the trace."),
]


class TlsotpOptions(CommandGroup):
    """tlsotp: a certificate authority (TTP), enrollment, and a customized TLS delivering an OTP."""

    commands = SUBCOMMANDS


def _innermost_parsed(options: usage.Options) -> usage.Options:
    node: Any = options
    while getattr(node, "subOptions", None) is not None:
        node = node.subOptions
    return cast(usage.Options, node)


def parse(argv: Sequence[str]) -> Any:
    """The chosen command's options, or ``usage.UsageError`` naming the command it is about."""
    options = TlsotpOptions()
    try:
        options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as exc:
        raise UsageFailure(command_path(_innermost_parsed(options)), str(exc)) from None
    return options.chosen()


class UnhandledErrors:
    """The command process's log observer: remembers, as one line, the first error nobody caught.

    Twisted logs an exception that escapes a protocol callback or a delayed call ("Unhandled
    Error"), or a failed Deferred that nobody handled, with a traceback; before logging begins,
    such critical events go to stderr. A command's stderr is for its one line, so they are kept
    here instead and turn a would-be success into exit code 1 (see ``main``).
    """

    def __init__(self) -> None:
        self._failure: str | None = None
        self._critical: str | None = None

    @property
    def first(self) -> str | None:
        """The first failure logged (its exception names the cause), else the first critical line."""
        return self._failure or self._critical

    def __call__(self, event: LogEvent) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            self._failure = self._failure or describe_error(failure.value)
        elif event.get("log_level") is LogLevel.critical:
            self._critical = self._critical or _one_line(formatEvent(event))


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "an unhandled error"


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: parse, run the chosen command under the reactor, exit with its code.

    Never a traceback: a usage error is one line and exit 2; any failure, including an
    exception nobody expected (in the command, in its Deferreds, in a protocol callback), is one
    line and exit 1.
    """
    try:
        command = parse(sys.argv[1:] if argv is None else argv)
    except UsageFailure as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    except Exception as exc:  # noqa: BLE001 - an Options class failing in an unforeseen way
        sys.stderr.write(f"tlsotp: {describe_error(exc)}\n")
        raise SystemExit(EXIT_FAILED) from None
    unhandled = UnhandledErrors()
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, unhandled)], discardBuffer=True, redirectStandardIO=False)

    def run(reactor: Any) -> Deferred[None]:
        def unexpected(failure: Failure) -> int:
            # Commands report their own refusals; this is the backstop that keeps it one line.
            sys.stderr.write(f"{command_path(command)}: {describe_error(failure.value)}\n")
            return EXIT_FAILED

        def finish(code: int) -> None:
            if code == EXIT_OK and unhandled.first is not None:
                # Something failed behind the command's back: say so, once, and fail.
                sys.stderr.write(f"{command_path(command)}: internal error: {unhandled.first}\n")
                code = EXIT_FAILED
            raise SystemExit(code)

        running = cast("Deferred[int]", maybeDeferred(lambda: command.run(reactor)))
        return running.addErrback(unexpected).addCallback(finish)

    react(run)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: two copies of this module's
    # classes would not recognise each other. ``python -m tlsotp`` is the documented spelling.
    from tlsotp.commands.main import main as _main

    _main()
