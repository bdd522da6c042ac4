"""The ``tlsotp`` command: a table of subcommands, each an Options class that knows how to run.

Adding a subcommand is one line in ``SUBCOMMANDS``: its name, an optional one-letter shortcut,
``"module:Class"`` of its Options class (imported only when that subcommand is chosen), and a
one-line description. The class is a ``usage.Options`` with::

    def run(self, reactor, out=None, err=None) -> Deferred[int]

which returns the exit code and reports its own refusals as one line on ``err``. Subclassing
``Command`` gives that for free: implement ``execute(reactor, out)`` and raise on failure. A
group of subcommands (like ``tlsotp ttp``) subclasses ``CommandGroup`` with its own table.

Exit codes: 0 success; 1 refused or failed (one line on stderr); 2 usage error (one line on
stderr). Never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TextIO, cast

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import react
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogBeginner
from twisted.python import usage
from twisted.python.failure import Failure

from tlsotp.alerts import AlertError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CODES_HELP = "Exit codes: 0 success, 1 refused or failed (one line on stderr), 2 usage error."


@dataclass(frozen=True)
class Subcommand:
    name: str
    shortcut: str | None
    options: str  # "package.module:OptionsClass", imported lazily
    description: str

    def load(self) -> type[usage.Options]:
        module_name, _, class_name = self.options.partition(":")
        return cast(type[usage.Options], getattr(importlib.import_module(module_name), class_name))


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("ttp", None, "tlsotp.commands.ttp_admin:TTPOptions", "Operate the TTP: init, token, revoke, list."),
    Subcommand("enroll", None, "tlsotp.commands.requester:EnrollOptions", "Enroll with the TTP using a token."),
    Subcommand("renew", None, "tlsotp.commands.requester:RenewOptions", "Renew this party's certificate."),
    Subcommand("crl", None, "tlsotp.commands.requester:CRLOptions", "Fetch and verify the TTP's CRL."),
    Subcommand("client", None, "tlsotp.commands.client:ClientCommandOptions", "Get (or confirm) an OTP from the server."),
    Subcommand("demo", None, "tlsotp.commands.demo:DemoOptions", "Run TTP, server and client in one process, with the trace."),
]


class CommandFailed(Exception):
    """A refusal the command states in one line (exit code 1)."""


def describe_error(error: BaseException | None) -> str:
    """One line: our typed errors speak for themselves; anything else also names its type."""
    if error is None:
        return "failed"
    if isinstance(error, (CommandFailed, AlertError, ValueError, OSError, ConnectionError)):
        return str(error) or type(error).__name__
    module = type(error).__module__
    if module.startswith("tlsotp"):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def command_path(options: usage.Options) -> str:
    """'tlsotp ttp token' for the token command's options: for messages that say who speaks."""
    names: list[str] = []
    node: Any = options
    while getattr(node, "parent", None) is not None:
        names.append(node.parent.subCommand)
        node = node.parent
    return " ".join(["tlsotp", *reversed(names)])


def _subcommand_entries(table: Sequence[Subcommand]) -> list[tuple[str, str | None, Callable[[], usage.Options], str]]:
    return [(sub.name, sub.shortcut, lambda sub=sub: sub.load()(), sub.description) for sub in table]  # type: ignore[misc]


def options_first(argv: Sequence[str], long_options: Sequence[str], short_options: str) -> list[str]:
    """Move positional arguments after the options, so that both orders parse (getopt stops at
    the first positional, and ``revoke SERIAL --reason R`` reads naturally)."""
    takes_value = {f"--{name[:-1]}" for name in long_options if name.endswith("=")}
    takes_value |= {f"-{letter}" for letter, following in zip(short_options, short_options[1:] + " ") if following == ":"}
    options: list[str] = []
    positional: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            positional.extend(args)
            break
        if arg.startswith("-") and arg != "-":
            options.append(arg)
            if arg in takes_value and args:
                options.append(args.pop(0))
        else:
            positional.append(arg)
    return options + (["--", *positional] if positional else [])


class Command(usage.Options):
    """A leaf subcommand: implement ``execute``; ``run`` turns failures into one line and 1."""

    synopsis = "[options]"
    longdesc = EXIT_CODES_HELP

    def getSynopsis(self) -> str:
        return f"Usage: {command_path(self)} {self.synopsis}"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else options
        super().parseOptions(options_first(argv, self.longOpt, self.shortOpt))  # type: ignore[no-untyped-call]

    def execute(self, reactor: Any, out: TextIO) -> int | Awaitable[int] | Deferred[int]:
        raise NotImplementedError

    def run(self, reactor: Any, out: TextIO | None = None, err: TextIO | None = None) -> Deferred[int]:
        out = out or sys.stdout
        err = err or sys.stderr
        result: Deferred[Any] = maybeDeferred(self.execute, reactor, out)

        def awaited(value: Any) -> Any:
            return ensureDeferred(value) if hasattr(value, "__await__") and not isinstance(value, Deferred) else value

        def failed(failure: Failure) -> int:
            assert err is not None
            err.write(f"{command_path(self)}: {describe_error(failure.value)}\n")
            return EXIT_FAILED

        return result.addCallback(awaited).addErrback(failed)


class CommandGroup(usage.Options):
    """A command made of subcommands; set ``commands`` to their table."""

    commands: list[Subcommand] = []
    longdesc = "Run a command with --help for its options. " + EXIT_CODES_HELP

    def getSynopsis(self) -> str:
        return f"Usage: {command_path(self)} COMMAND [options]"

    def __init__(self) -> None:
        self.subCommands = _subcommand_entries(self.commands)
        super().__init__()  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        if self.subCommand is None:
            names = ", ".join(sub.name for sub in self.commands)
            raise usage.UsageError(f"choose a command: {names}")

    def chosen(self) -> Any:
        """The innermost chosen subcommand's options."""
        node: Any = self
        while isinstance(node, CommandGroup):
            node = node.subOptions
        return node


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


class UsageFailure(Exception):
    def __init__(self, command: str, message: str) -> None:
        super().__init__(command, message)
        self.command = command
        self.message = message

    def __str__(self) -> str:
        return f"{self.command}: error: {self.message} (see '{self.command} --help')"


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
    # Run the imported module's main, not this __main__ copy: subcommand modules import
    # tlsotp.commands.main, and two copies of its classes would not recognise each other.
    from tlsotp.commands.main import main as _main

    _main()
