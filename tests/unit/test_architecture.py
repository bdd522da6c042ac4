"""The package layout's rules, read from the source with ``ast`` (nothing is imported).

tlsotp has three layers, and arrows run one way (core <- services <- commands):

- the sans-I/O core (``tlsotp.codec``, ``tlsotp.alerts``, ``tlsotp.database_checks``,
  ``tlsotp.handshake``, ``tlsotp.pki``, ``tlsotp.otp``, ``tlsotp.ttp``) imports neither Twisted
  nor the layers above it;
- ``tlsotp.services`` (Twisted protocols, factories, services) never imports ``tlsotp.commands``;
- ``tlsotp.commands`` (twistd tap modules and ``tlsotp`` subcommands) may import both.

An import is ``import a.b``, ``from a import b`` (an edge to ``a.b`` when that is a module, else
to ``a``), a relative import, or a lazy name: a ``"module:Name"`` string anywhere, or a plain
``"module"`` string handed to ``ServiceMaker``/``import_module`` or listed in a table (a list,
tuple, set or dict value) -- the twistd plugins' ``ServiceMaker`` strings and the ``Subcommand``
tables of ``tlsotp.commands`` are such names. The import graph of tlsotp, lazy names included,
has no cycle. Importing ``a.b.c`` also runs ``a/__init__.py``; that implicit edge is not counted,
so a package's ``__init__`` may re-export its own submodules.

The twistd plugin modules (``twisted/plugins/*.py``) only declare ``ServiceMaker`` instances.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.processes import REPO

CORE = (
    "tlsotp.codec",
    "tlsotp.alerts",
    "tlsotp.database_checks",
    "tlsotp.handshake",
    "tlsotp.pki",
    "tlsotp.otp",
    "tlsotp.ttp",
)
SERVICES = ("tlsotp.services",)
COMMANDS = ("tlsotp.commands",)
# Modules directly in tlsotp/ (the package itself, __main__, curated entry points) belong to no
# layer: only the cycle rule applies to them. A new subpackage must be placed in a layer above.
PLUGIN_IMPORTS = {"twisted.application.service", "twisted.plugin"}
LAZY_CALLS = {"ServiceMaker", "import_module", "__import__", "namedModule", "namedAny", "namedObject"}


def within(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    how: str  # "import", "from", "relative" or "lazy"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.how}, {self.source}:{self.line})"


@dataclass
class ImportGraph:
    """Modules found under a source root and the imports each makes (of anything, by name)."""

    files: dict[str, Path] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    # Top-level names each module defines (for checking "module:Name" strings).
    defined: dict[str, set[str]] = field(default_factory=dict)
    lazy_names: list[tuple[Edge, str]] = field(default_factory=list)
    # The package each module's relative imports start from.
    package_of: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, root: Path, *packages: str) -> ImportGraph:
        """Parse every module below ``root/<package>`` for each package (a dotted path)."""
        graph = cls()
        for package in packages:
            base = root.joinpath(*package.split("."))
            for path in sorted(base.rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                is_package = parts[-1] == "__init__"
                if is_package:
                    parts.pop()
                graph.files[".".join(parts)] = path
                graph.package_of[".".join(parts)] = ".".join(parts) if is_package else ".".join(parts[:-1])
        for module, path in graph.files.items():
            graph._read(module, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        return graph

    def _resolve_relative(self, module: str, level: int, name: str | None) -> str:
        package = self.package_of[module].split(".")
        base = package[: len(package) - (level - 1)] if level > 1 else package
        return ".".join([*base, name] if name else base)

    def _read(self, module: str, tree: ast.Module) -> None:
        self.defined[module] = _top_level_names(tree)
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.edges.append(Edge(module, alias.name, node.lineno, "import"))
            elif isinstance(node, ast.ImportFrom):
                how = "relative" if node.level else "from"
                origin = self._resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    target = submodule if submodule in self.files else origin
                    self.edges.append(Edge(module, target, node.lineno, how))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if ":" in node.value:
                    named, _, attribute = node.value.partition(":")
                    if _is_dotted(named) and named.split(".")[0] in self.roots and attribute.isidentifier():
                        edge = Edge(module, named, node.lineno, "lazy")
                        self.edges.append(edge)
                        self.lazy_names.append((edge, attribute))
            elif isinstance(node, ast.Call):
                if _call_name(node.func) in LAZY_CALLS:
                    self._lazy_plain(module, node.args)
            elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                self._lazy_plain(module, node.elts)
            elif isinstance(node, ast.Dict):
                self._lazy_plain(module, node.values)

    @property
    def roots(self) -> set[str]:
        return {module.split(".")[0] for module in self.files}

    def _lazy_plain(self, module: str, values: Iterable[ast.expr | None]) -> None:
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value in self.files:
                self.edges.append(Edge(module, value.value, value.lineno, "lazy"))

    def internal_edges(self) -> list[Edge]:
        """Edges between the modules found (self-references, like a table naming its own module, left out)."""
        return [edge for edge in self.edges if edge.target in self.files and edge.target != edge.source]

    def cycles(self) -> list[list[Edge]]:
        """One cycle through each strongly connected group of modules (empty when there is none)."""
        successors: dict[str, list[Edge]] = {module: [] for module in self.files}
        for edge in self.internal_edges():
            successors[edge.source].append(edge)
        return [_cycle_in(component, successors) for component in _strongly_connected(successors) if len(component) > 1]


def _is_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _strongly_connected(successors: dict[str, list[Edge]]) -> Iterator[set[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit on a deep package)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in successors:
        if start in index:
            continue
        work: list[tuple[str, Iterator[Edge]]] = [(start, iter(successors[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            for edge in pending:
                if edge.target not in index:
                    index[edge.target] = low[edge.target] = len(index)
                    stack.append(edge.target)
                    on_stack.add(edge.target)
                    work.append((edge.target, iter(successors[edge.target])))
                    break
                if edge.target in on_stack:
                    low[node] = min(low[node], index[edge.target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    yield component


def _cycle_in(component: set[str], successors: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest cycle through the component's first module (by name), as its edges."""
    start = min(component)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in successors[node]:
                if edge.target == start:
                    return [*paths[node], edge]
                if edge.target in component and edge.target not in paths:
                    paths[edge.target] = [*paths[node], edge]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe_cycle(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source, *(edge.target for edge in cycle)]) + "\n" + "\n".join(f"    {edge}" for edge in cycle)


class CheckerTests(SynchronousTestCase):
    """The checker itself finds what it claims to, on a small tree written for the purpose."""

    def write(self, files: dict[str, str]) -> ImportGraph:
        root = Path(self.mktemp())
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return ImportGraph.of(root, "pkg")

    def test_every_kind_of_import_is_an_edge(self) -> None:
        graph = self.write({
            "pkg/__init__.py": '"""pkg: "pkg.b" in a docstring is no edge."""\n',
            "pkg/a.py": "import os.path\nfrom pkg import b\nfrom . import c\nfrom .sub.d import X\n",
            "pkg/b.py": "from pkg.c import thing\n",
            "pkg/c.py": "TABLE = ['pkg.sub', 'not.a.module']\nLOG = dict(namespace='pkg.b')\nX = run('pkg.a:main')\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "X = ServiceMaker('n', 'pkg.b', 'd', 'n')\nfrom .. import c\nfrom ..b import y\n",
        })
        found = {(edge.source, edge.target, edge.how) for edge in graph.internal_edges()}
        self.assertEqual(found, {
            ("pkg.a", "pkg.b", "from"),
            ("pkg.a", "pkg.c", "relative"),
            ("pkg.a", "pkg.sub.d", "relative"),
            ("pkg.b", "pkg.c", "from"),
            ("pkg.c", "pkg.sub", "lazy"),
            ("pkg.c", "pkg.a", "lazy"),
            ("pkg.sub.d", "pkg.b", "lazy"),
            ("pkg.sub.d", "pkg.c", "relative"),
            ("pkg.sub.d", "pkg.b", "relative"),
        })
        self.assertIn(Edge("pkg.a", "os.path", 1, "import"), graph.edges)

    def test_a_cycle_closed_by_a_lazy_name_is_reported_with_its_edges(self) -> None:
        graph = self.write({
            "pkg/__init__.py": "",
            "pkg/main.py": "TABLE = [('leaf', 'pkg.leaf:Options')]\n",
            "pkg/leaf.py": "from pkg.helpers import x\n",
            "pkg/helpers.py": "from pkg.main import describe\n",
            "pkg/alone.py": "TABLE = ['pkg.alone:Self']\n",
        })
        [cycle] = graph.cycles()
        self.assertEqual(
            describe_cycle(cycle).splitlines()[0], "pkg.helpers -> pkg.main -> pkg.leaf -> pkg.helpers"
        )
        self.assertIn("pkg.main -> pkg.leaf (lazy, pkg.main:1)", describe_cycle(cycle))

    def test_no_cycle(self) -> None:
        graph = self.write({"pkg/__init__.py": "from pkg import a\n", "pkg/a.py": "from pkg.b import x\n", "pkg/b.py": ""})
        self.assertEqual(graph.cycles(), [])


class LayerTests(SynchronousTestCase):
    """tlsotp's own tree keeps the rules of the module docstring."""

    def setUp(self) -> None:
        self.graph = ImportGraph.of(REPO, "tlsotp", "twisted.plugins")
        self.tlsotp = sorted(module for module in self.graph.files if within(module, ["tlsotp"]))

    def edges_from(self, sources: Iterable[str]) -> list[Edge]:
        return [edge for edge in self.graph.edges if within(edge.source, sources)]

    def assertNoEdges(self, edges: list[Edge], rule: str) -> None:
        if edges:
            self.fail(f"{rule}; these imports break it:\n" + "\n".join(f"    {edge}" for edge in edges))

    def test_the_tree_is_read(self) -> None:
        """The checker sees the layers it rules over, and real edges between them."""
        for package in (*CORE, *SERVICES, *COMMANDS):
            self.assertIn(package, self.graph.files)
        self.assertIn("tlsotp.commands.main", self.graph.files)
        internal = {(edge.source, edge.target) for edge in self.graph.internal_edges()}
        self.assertIn(("tlsotp.commands.main", "tlsotp.commands.ttp_admin"), internal)  # the lazy table
        self.assertIn(("twisted.plugins.tlsotp_plugins", "tlsotp.commands.ttp_daemon"), internal)  # a ServiceMaker

    def test_every_module_is_in_a_layer(self) -> None:
        """Only modules directly in tlsotp/ stand outside the layers; a subpackage is placed in one."""
        layers = (*CORE, *SERVICES, *COMMANDS)
        unplaced = [
            module for module in self.tlsotp
            if module != "tlsotp" and self.graph.package_of[module] != "tlsotp" and not within(module, layers)
        ]
        unplaced += [module for module in self.tlsotp if self.graph.package_of[module] == module != "tlsotp" and not within(module, layers)]
        self.assertEqual(unplaced, [], "each subpackage of tlsotp belongs in CORE, SERVICES or COMMANDS (tests/test_architecture.py)")

    def test_no_import_cycle(self) -> None:
        cycles = self.graph.cycles()
        if cycles:
            self.fail("the import graph of tlsotp has a cycle (lazy names included):\n" + "\n".join(map(describe_cycle, cycles)))

    def test_core_is_sans_io(self) -> None:
        forbidden = ("twisted", *SERVICES, *COMMANDS)
        edges = [edge for edge in self.edges_from(CORE) if within(edge.target, forbidden)]
        self.assertNoEdges(edges, "the sans-I/O core imports neither Twisted nor tlsotp.services nor tlsotp.commands")

    def test_services_do_not_import_commands(self) -> None:
        edges = [edge for edge in self.edges_from(SERVICES) if within(edge.target, COMMANDS)]
        self.assertNoEdges(edges, "tlsotp.services never imports tlsotp.commands (settings come in, not argv)")

    def test_lazy_names_resolve(self) -> None:
        """Every "module:Name" string names a module of the tree that defines that name."""
        broken = [
            f"    {edge} names {edge.target}:{name}"
            for edge, name in self.graph.lazy_names
            if edge.target not in self.graph.files or name not in self.graph.defined[edge.target]
        ]
        self.assertEqual(broken, [], "lazy names that would fail when loaded")

    def test_plugins_only_declare_service_makers(self) -> None:
        plugins = sorted(module for module in self.graph.files if within(module, ["twisted.plugins"]))
        self.assertNotEqual(plugins, [])
        for module in plugins:
            imports = [edge for edge in self.graph.edges if edge.source == module and edge.how != "lazy"]
            self.assertNoEdges(
                [edge for edge in imports if edge.target not in PLUGIN_IMPORTS],
                f"{module} imports only twisted.application.service and twisted.plugin",
            )
            tree = ast.parse(self.graph.files[module].read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    continue  # the docstring
                self.assertTrue(
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and _call_name(node.value.func) == "ServiceMaker",
                    f"{module}:{node.lineno}: a plugin module only declares ServiceMaker(...) instances",
                )
                assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                argument = node.value.args[1]
                self.assertTrue(
                    isinstance(argument, ast.Constant) and isinstance(argument.value, str),
                    f"{module}:{node.lineno}: the tap module is named by a string",
                )
                assert isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                tap: str = argument.value
                self.assertIn(tap, self.graph.files, f"{module}:{node.lineno}: no module {tap}")
                self.assertTrue(within(tap, COMMANDS), f"{module}:{node.lineno}: a tap module lives in tlsotp.commands")
                self.assertLessEqual({"Options", "makeService"}, self.graph.defined[tap], f"{tap} is no tap module")
