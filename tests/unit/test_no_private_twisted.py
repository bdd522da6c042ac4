"""No module under tlsotp/ relies on a private Twisted name (one starting with a single ``_``):
Twisted may change those in any release without a deprecation.

Three ways a module could, each found with ``ast`` over the source:

* importing one: ``import twisted._x``, ``from twisted.y._z import a``, ``from twisted.y import _a``;
* reaching through a name imported from Twisted: ``reactor._x``, ``defer._y``, ``Factory._z``;
* in a class with a Twisted base (found by importing the module): defining a method Twisted's
  base defines privately (overriding a private hook such as ``NetstringReceiver._handleParseError``)
  or touching ``self._x`` where ``_x`` is one of the base's private names (its class attributes and
  the ``self._x`` its source assigns, such as ``NetstringReceiver._remainingData``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from twisted.trial import unittest

import tlsotp

PACKAGE = Path(tlsotp.__file__).resolve().parent


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@lru_cache(maxsize=None)
def private_names_of(base: type) -> frozenset[str]:
    """The single-underscore names a Twisted class defines: class attributes, and the
    attributes its methods assign on ``self``."""
    names = {name for name in vars(base) if private(name)}
    try:
        source = textwrap.dedent(inspect.getsource(base))
    except (OSError, TypeError):
        return frozenset(names)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            if isinstance(node.ctx, ast.Store) and private(node.attr):
                names.add(node.attr)
    return frozenset(names)


def twisted_bases(cls: type) -> list[type]:
    return [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] == "twisted"]


def violations(source: str, filename: str, namespace: dict[str, object]) -> Iterator[str]:
    """What in ``source`` uses a private Twisted name; ``namespace`` holds the module's globals
    (to find the classes it defines, with their real bases)."""
    tree = ast.parse(source, filename)
    from_twisted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "twisted":
                    if any(private(part) for part in alias.name.split(".")):
                        yield f"{filename}:{node.lineno}: import {alias.name}"
                    from_twisted.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "twisted":
            if any(private(part) for part in node.module.split(".")):
                yield f"{filename}:{node.lineno}: from {node.module} import ..."
            for alias in node.names:
                if private(alias.name):
                    yield f"{filename}:{node.lineno}: from {node.module} import {alias.name}"
                from_twisted.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in from_twisted:
                yield f"{filename}:{node.lineno}: {ast.unparse(node)}"
        if isinstance(node, ast.ClassDef):
            cls = namespace.get(node.name)
            if not isinstance(cls, type):
                continue
            hidden: set[str] = set()
            for base in twisted_bases(cls):
                hidden |= private_names_of(base)
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and inner.name in hidden:
                    yield f"{filename}:{inner.lineno}: {node.name} overrides Twisted's private {inner.name}"
                if (
                    isinstance(inner, ast.Attribute)
                    and isinstance(inner.value, ast.Name)
                    and inner.value.id == "self"
                    and inner.attr in hidden
                ):
                    yield f"{filename}:{inner.lineno}: {node.name} uses Twisted's private self.{inner.attr}"


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


class NoPrivateTwistedNamesTests(unittest.SynchronousTestCase):
    def test_no_module_uses_a_private_twisted_name(self) -> None:
        found: list[str] = []
        scanned = 0
        for name, path in modules():
            source = path.read_text()
            module = importlib.import_module(name)
            found += violations(source, str(path.relative_to(PACKAGE.parent)), vars(module))
            scanned += 1
        self.assertGreater(scanned, 20)  # the package was found
        self.assertEqual(found, [])

    def test_the_scan_finds_what_the_old_shells_did(self) -> None:
        # The netstring hooks the shells used before tlsotp.framing, and the other two forms.
        from twisted.protocols.basic import NetstringReceiver

        source = textwrap.dedent(
            """
            import twisted._version
            from twisted.internet import reactor
            from twisted.python import _pydoctor

            class Shell(NetstringReceiver):
                def _handleParseError(self):
                    self.brokenPeer = 1
                    return self._remainingData

                def _own_helper(self):
                    self._mine = reactor._started
            """
        )
        namespace: dict[str, object] = {}
        exec(compile("class Shell(NetstringReceiver):\n    pass\n", "<old>", "exec"), {"NetstringReceiver": NetstringReceiver}, namespace)
        found = list(violations(source, "<old>", namespace))
        self.assertEqual(len(found), 5, found)
        for expected in ("twisted._version", "_pydoctor", "private _handleParseError", "self._remainingData", "reactor._started"):
            self.assertTrue(any(expected in line for line in found), (expected, found))
