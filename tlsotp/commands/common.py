"""What every ``tlsotp`` subcommand shares: the ``Command`` and ``CommandGroup`` bases, the
lazy ``Subcommand`` table entry, exit codes, and the one-line error rule.

The leaf command modules (``ttp_admin``, ``requester``, ``client``, ``demo``) and the
tap modules import these from here, never from ``tlsotp.commands.main``: ``main`` names the leaf
modules in its lazy table, so a leaf importing ``main`` would close an import cycle
(``tests/test_architecture.py`` checks that none exists).

Exit codes: 0 success; 1 refused or failed (one line on stderr); 2 usage error (one line on
stderr). Never a traceback.

``--json`` (on the commands that have it): the result is one JSON document on stdout and
nothing else goes there; a failure (exit 1) is still its one line on stderr, and stdout gets
one JSON document too, ``{"error": {"command": ..., "message": ...}}`` (``json_error`` adds
more where the command knows more), so a script reading stdout always gets JSON. A usage
error (exit 2) is never JSON: the arguments did not parse.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NoReturn, Sequence, TextIO, cast

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.python import usage
from twisted.python.failure import Failure

from tlsotp import __version__
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


class CommandFailed(Exception):
    """A refusal the command states in one line (exit code 1)."""


class AnsweredFailure(CommandFailed):
    """A failure whose ``--json`` document is already on stdout (a refused confirmation): one
    line on stderr and exit code 1, and no second document."""


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


def _long_takes_value(arg: str, long_options: Sequence[str]) -> bool:
    """Whether ``--name`` (or a unique prefix of it, as getopt accepts) is an option with a value."""
    name = arg[2:]
    if "=" in name:
        return False  # --name=VALUE carries its value
    takes = {option.rstrip("="): option.endswith("=") for option in long_options}
    if name in takes:
        return takes[name]
    matches = [option for option in takes if option.startswith(name)]
    # An unknown or ambiguous prefix is left for getopt to refuse with its own message.
    return len(matches) == 1 and takes[matches[0]]


def _short_takes_value(arg: str, short_options: str) -> bool:
    """Whether ``-x`` (or a group ``-abx``) ends with an option that takes the next argument."""
    for index, letter in enumerate(arg[1:], start=1):
        position = short_options.find(letter)
        if position < 0 or letter == ":":
            return False
        if short_options[position + 1 : position + 2] == ":":
            return index == len(arg) - 1  # a value attached to it (-dDIR) needs no next argument
    return False


def options_first(argv: Sequence[str], long_options: Sequence[str], short_options: str) -> list[str]:
    """Move positional arguments after the options, so that both orders parse (getopt stops at
    the first positional, and ``revoke SERIAL --reason R`` reads naturally). An option's value
    stays with it, also after an abbreviated option (``--dat DIR`` for ``--data-dir DIR``)."""
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
            if arg.startswith("--"):
                takes_value = _long_takes_value(arg, long_options)
            else:
                takes_value = _short_takes_value(arg, short_options)
            if takes_value and args:
                options.append(args.pop(0))
        else:
            positional.append(arg)
    return options + (["--", *positional] if positional else [])


def print_version() -> NoReturn:
    """``--version``: tlsotp's version (Twisted's ``usage.Options`` would print Twisted's)."""
    sys.stdout.write(f"tlsotp {__version__}\n")
    sys.stdout.flush()
    raise SystemExit(EXIT_OK)


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn the ``ValueError`` of an option's parser into a ``usage.UsageError`` (exit 2), saying
    what ``ValueError`` said: ``with usage_errors(): self["role"] = parse_role(self["role"])``."""
    try:
        yield
    except ValueError as exc:
        raise usage.UsageError(str(exc)) from None


class Command(usage.Options):
    """A leaf subcommand: implement ``execute``; ``run`` turns failures into one line and 1."""

    synopsis = "[options]"
    longdesc = EXIT_CODES_HELP

    def getSynopsis(self) -> str:
        return f"Usage: {command_path(self)} {self.synopsis}"

    def opt_version(self) -> NoReturn:
        """Print tlsotp's version and exit."""
        print_version()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else options
        super().parseOptions(options_first(argv, self.longOpt, self.shortOpt))  # type: ignore[no-untyped-call]

    def execute(self, reactor: Any, out: TextIO) -> int | Awaitable[int] | Deferred[int]:
        raise NotImplementedError

    @property
    def wants_json(self) -> bool:
        """Whether this command has a ``--json`` flag and it was given."""
        return bool(self.opts.get("json"))

    def json_error(self, error: BaseException | None) -> dict[str, Any]:
        """More fields for the ``--json`` error document, beyond command and message."""
        return {}

    def run(self, reactor: Any, out: TextIO | None = None, err: TextIO | None = None) -> Deferred[int]:
        out = out or sys.stdout
        err = err or sys.stderr
        result: Deferred[Any] = maybeDeferred(self.execute, reactor, out)

        def awaited(value: Any) -> Any:
            return ensureDeferred(value) if hasattr(value, "__await__") and not isinstance(value, Deferred) else value

        def failed(failure: Failure) -> int:
            assert err is not None and out is not None
            message = describe_error(failure.value)
            err.write(f"{command_path(self)}: {message}\n")
            if self.wants_json and not failure.check(AnsweredFailure):  # type: ignore[no-untyped-call]
                write_json(out, {"error": {"command": command_path(self), "message": message,
                                           **self.json_error(failure.value)}})
            return EXIT_FAILED

        return result.addCallback(awaited).addErrback(failed)


def write_json(out: TextIO, document: dict[str, Any]) -> None:
    """One JSON document and a newline on ``out``."""
    out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


class CommandGroup(usage.Options):
    """A command made of subcommands; set ``commands`` to their table."""

    commands: list[Subcommand] = []
    longdesc = "Run a command with --help for its options. " + EXIT_CODES_HELP

    def getSynopsis(self) -> str:
        return f"Usage: {command_path(self)} COMMAND [options]"

    def opt_version(self) -> NoReturn:
        """Print tlsotp's version and exit."""
        print_version()

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


class UsageFailure(Exception):
    def __init__(self, command: str, message: str) -> None:
        super().__init__(command, message)
        self.command = command
        self.message = message

    def __str__(self) -> str:
        return f"{self.command}: error: {self.message} (see '{self.command} --help')"
