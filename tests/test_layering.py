"""Every import and purity rule of the project, checked on the source in one place.

General layout:
- the scan: every module of edge/, cluster/, scheduler/ and simulations/ is parsed with ast, and every import
  counts: at module level, inside functions, under `if TYPE_CHECKING:` (a type-only import is still a
  dependency of the design), relative ones resolved, and `importlib.import_module("...")` with a literal name
- LAYERS: which layer each module is in and which other layers it may import; a module in no layer fails,
  so a new module is placed in the table on purpose
- FORBIDDEN: what no layer may import whatever the table says (the simulator, the benchmarks, the tests)
- cycles: no import cycle between project modules, reported as the cycle's path
- purity: the sans-I/O cores (`pure_module_paths`) import no clock, socket, trio, thread or global randomness
- injection: in edge, only edge/runtime.py reads the world (wall clock, global random, DNS); cluster/shell/ takes
  it from its runtime too
- each rule has a self-test: a planted violation in a made-up module must be reported

Why one file: the rules are one design (cores below shells, the node below the simulator, the world injected
through edge/runtime.py), and a rule kept beside the code it constrains is easy to relax by accident.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED_PACKAGES = ("edge", "cluster", "scheduler", "simulations")
# Every top-level name that belongs to this repository, scanned or not: an import of one is a project import.
PROJECT_ROOTS = frozenset({*SCANNED_PACKAGES, "bench", "tests"})


# ---------------------------------------------------------------------------------------------------------------
# The scan


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # dotted, as imported: "edge.http.server", "edge.store" for edge/store/__init__.py
    source: str
    is_package: bool = False


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    imported: str  # the absolute name of a project module (a submodule when `from pkg import submodule`)
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def project_modules(root: Path = ROOT, packages: Iterable[str] = SCANNED_PACKAGES) -> list[Module]:
    modules = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules.append(Module(name, path.read_text(encoding="utf-8"), is_package))
    return modules


def _absolute(module: Module, level: int, target: str | None) -> str:
    """The absolute module a `from <dots><target> import ...` in `module` names."""
    if level == 0:
        return target or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT_ROOTS


def imports_of(module: Module, known: Iterable[str] = ()) -> list[Import]:
    """Every project import in `module`, at any depth. `from pkg import x` names pkg.x when that is a module
    (one of `known`), else pkg."""
    known = set(known)
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        if _is_project(name):
            found.append(Import(module.name, name, line))

    for node in ast.walk(ast.parse(module.source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base, node.lineno)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                add(first.value, node.lineno)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}
    )


def all_imports(modules: Sequence[Module]) -> list[Import]:
    known = {module.name for module in modules}
    return [found for module in modules for found in imports_of(module, known)]


# ---------------------------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    # Exact module names, or "pkg.*" for a package and everything in it. The most specific pattern wins: an exact
    # name over any "pkg.*", a longer "pkg.*" over a shorter one (edge.engine.shell.* is not in edge.engine.*).
    modules: tuple[str, ...]
    # Other layers whose modules this one may import; its own modules it always may.
    may_import: tuple[str, ...]


# Bottom up. Written from what the code imports (type-only imports included), and kept tight: widening a layer's
# list is a design decision to make here, in review, not a side effect of an edit elsewhere.
LAYERS = (
    # The pure cores. The scheduler needs nothing; the SWIM core needs only itself (not its shell, not its harness).
    Layer("scheduler", ("scheduler.*",), ()),
    Layer("cluster", ("cluster.*",), ()),
    Layer("cluster.testing", ("cluster.testing",), ("cluster",)),
    Layer("cluster.shell", ("cluster.shell.*",), ("cluster",)),
    # edge's leaves: errors, URL origins, metrics, log lines.
    Layer("edge.problems", ("edge.problems",), ()),
    Layer("edge.logs", ("edge.logs",), ()),
    Layer("edge.process", ("edge.process",), ()),
    Layer("edge.outbound.origins", ("edge.outbound.origins",), ()),
    Layer("edge.wire", ("edge.wire.*",), ()),  # HTTP/1.1 sans I/O: requests in (the front end), responses in (clients)
    Layer("edge.metrics", ("edge.metrics",), ()),
    # The job engine's pure core, then what stores its records.
    Layer("edge.engine", ("edge.engine.*",), ("scheduler", "edge.problems", "edge.outbound.origins")),
    Layer("edge.store", ("edge.store.*",), ("edge.engine",)),
    # What a node takes from the world (the gossip transport factory is part of it), and its configuration:
    # neither knows the HTTP stack or the node.
    Layer("edge.runtime", ("edge.runtime",), ("cluster.shell",)),
    Layer("edge.config", ("edge.config",), ("scheduler", "edge.outbound.origins")),
    # HTTP out (SSRF guard, client) and HTTP in (the h11 front end, HTTP/2 on hardened hypercorn).
    Layer("edge.outbound", ("edge.outbound.*",), ("edge.outbound.origins", "edge.wire", "edge.runtime")),
    Layer(
        "edge.http.server",
        ("edge.http.server", "edge.http.http1", "edge.http.h2", "edge.http.asgi"),
        ("edge.config", "edge.runtime", "edge.wire"),
    ),
    # The engine's Trio shell: queues, executor, webhooks.
    Layer(
        "edge.engine.shell",
        ("edge.engine.shell.*",),
        (
            "scheduler",
            "edge.engine",
            "edge.store",
            "edge.config",
            "edge.metrics",
            "edge.runtime",
            "edge.outbound",
            "edge.outbound.origins",
            "edge.logs",
        ),
    ),
    # A node's place in the cluster: membership, job routing, the node-to-node API.
    Layer(
        "edge.placement",
        ("edge.placement.*",),
        (
            "cluster",
            "cluster.shell",
            "edge.problems",
            "edge.engine",
            "edge.engine.shell",
            "edge.store",
            "edge.config",
            "edge.runtime",
            "edge.outbound",
            "edge.outbound.origins",
            "edge.metrics",
            "edge.logs",
        ),
    ),
    # The inbound proxy: the fair scheduler in front of an operator's upstream, served like the job API.
    Layer(
        "edge.proxy",
        ("edge.proxy.*",),
        ("scheduler", "edge.problems", "edge.config", "edge.http.server", "edge.wire"),
    ),
    # The SDKs' metering envelope (pure), and the webhook-secrets API on the shared secret store.
    Layer("edge.http.envelope", ("edge.http.envelope",), ()),
    Layer(
        "edge.http.secrets",
        ("edge.http.secrets",),
        ("edge.problems", "edge.config", "edge.store", "edge.placement"),
    ),
    # A job's event stream, and the dashboard: both read the engine's event bus, through the router for other nodes.
    Layer(
        "edge.http.events",
        ("edge.http.events",),
        ("edge.problems", "edge.engine", "edge.engine.shell", "edge.store", "edge.placement", "edge.http.server"),
    ),
    Layer(
        "edge.http.dashboard",
        ("edge.http.dashboard",),
        ("edge.config", "edge.engine.shell", "edge.placement"),
    ),
    # The job API, and its description (built from the constants of what it describes).
    Layer(
        "edge.http.openapi",
        ("edge.http.openapi",),
        ("edge.problems", "edge.engine", "edge.placement", "edge.http.envelope"),
    ),
    Layer(
        "edge.http.api",
        ("edge.http.api",),
        (
            "edge.problems",
            "edge.outbound.origins",
            "edge.metrics",
            "edge.engine",
            "edge.store",
            "edge.runtime",
            "edge.config",
            "edge.outbound",
            "edge.http.server",
            "edge.engine.shell",
            "edge.placement",
            "edge.http.envelope",
            "edge.http.secrets",
            "edge.http.openapi",
            "edge.http.events",
            "edge.http.dashboard",
        ),
    ),
    Layer("edge.http", ("edge.http",), ()),  # the package face
    # The node holds everything together; the command line starts it.
    Layer(
        "edge.node",
        ("edge.node",),
        (
            "cluster.shell",
            "edge.metrics",
            "edge.engine",
            "edge.store",
            "edge.runtime",
            "edge.config",
            "edge.outbound",
            "edge.http.server",
            "edge.engine.shell",
            "edge.placement",
            "edge.proxy",
            "edge.http.api",
            "edge.http.dashboard",
        ),
    ),
    # Fly.io's machine environment as configuration defaults; the command line applies it.
    Layer("edge.fly", ("edge.fly",), ("edge.config",)),
    # The supervisor of a node's worker processes: it derives each worker's settings and names the node.
    Layer("edge.workers", ("edge.workers",), ("edge.config", "edge.placement", "edge.runtime")),
    Layer(
        "edge.cli",
        ("edge.cli",),
        ("edge.config", "edge.fly", "edge.logs", "edge.node", "edge.process", "edge.runtime", "edge.workers"),
    ),
    Layer("edge", ("edge", "edge.__main__"), ("edge.cli",)),
    # The simulator runs real nodes, so it sits on top of everything it drives or inspects.
    Layer(
        "simulations",
        ("simulations.*",),
        (
            "scheduler",
            "cluster",
            "cluster.shell",
            "edge.outbound.origins",
            "edge.engine",
            "edge.store",
            "edge.runtime",
            "edge.config",
            "edge.placement",
            "edge.node",
            "edge.problems",  # it reads refusals as clients do: by their problem type
            "edge.process",  # `--calibrate` measures with the collector tuned as a serving node has it
        ),
    ),
)

# (importer prefix, imported prefix, why): refused whatever LAYERS says, with this reason.
FORBIDDEN = (
    (
        "edge",
        "simulations",
        "the simulator drives the node, never the other way round (`ezthrottle simulate` "
        "reaches it through the `ezthrottle.commands` entry points)",
    ),
    ("cluster", "simulations", "the simulator drives the cluster, never the other way round"),
    ("scheduler", "simulations", "the simulator drives the scheduler, never the other way round"),
    ("", "bench", "benchmarks are run, never imported"),
    ("", "tests", "the tests import the project, never the other way round"),
)


def _specificity(pattern: str, module: str) -> tuple[int, int] | None:
    """How closely `pattern` matches `module` (higher is closer), or None when it does not match."""
    if pattern.endswith(".*"):
        base = pattern[:-2]
        if module == base or module.startswith(base + "."):
            return (len(base), 0)
        return None
    return (len(pattern), 1) if module == pattern else None


def layer_of(module: str, layers: Sequence[Layer] = LAYERS) -> Layer | None:
    best: tuple[tuple[int, int], Layer] | None = None
    for layer in layers:
        for pattern in layer.modules:
            score = _specificity(pattern, module)
            if score is not None and (best is None or score > best[0]):
                best = (score, layer)
    return None if best is None else best[1]


def _under(module: str, prefix: str) -> bool:
    return prefix == "" or module == prefix or module.startswith(prefix + ".")


def layering_violations(
    modules: Sequence[Module], layers: Sequence[Layer] = LAYERS, forbidden: Sequence[tuple[str, str, str]] = FORBIDDEN
) -> list[str]:
    found = []
    for module in modules:
        if layer_of(module.name, layers) is None:
            found.append(f"{module.name} is in no layer: add it to LAYERS in tests/test_layering.py")
    for link in all_imports(modules):
        refusal = next(
            (why for src, dst, why in forbidden if _under(link.importer, src) and _under(link.imported, dst)), None
        )
        if refusal is not None:
            found.append(f"{link}: {refusal}")
            continue
        importer, imported = layer_of(link.importer, layers), layer_of(link.imported, layers)
        if importer is None or importer is imported:
            continue
        if imported is None:
            found.append(f"{link}: {link.imported} is in no layer")
        elif imported.name not in importer.may_import:
            rule = f"only {', '.join(importer.may_import)}" if importer.may_import else "nothing else of the project"
            found.append(
                f"{link}: layer {importer.name} may import {rule}; {link.imported} is in layer {imported.name}"
            )
    return found


def test_every_import_follows_the_layers() -> None:
    violations = layering_violations(project_modules())
    assert not violations, "\n".join(violations)


def test_every_layer_names_only_layers_that_exist() -> None:
    names = [layer.name for layer in LAYERS]
    assert len(names) == len(set(names))
    unknown = sorted({name for layer in LAYERS for name in layer.may_import} - set(names))
    assert unknown == []


def test_a_planted_layering_violation_is_reported() -> None:
    planted = [
        Module("scheduler.gcra", "def later():\n    from edge import config\n"),  # inside a function
        Module(
            "edge.config", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edge.http import server\n"
        ),
        Module("edge.http.server", ""),
        Module("edge.store.base", "from ..engine import records\n"),  # relative, and allowed
        Module("edge.engine.records", ""),
        Module("edge.cli", "import importlib\nimportlib.import_module('simulations.cli')\n"),
        Module("edge.stray", ""),
        Module("cluster.swim", "import tests.cluster.helpers\n"),
    ]
    assert layering_violations(planted) == [
        "edge.stray is in no layer: add it to LAYERS in tests/test_layering.py",
        "scheduler.gcra imports edge.config (line 2): layer scheduler may import nothing else of the project; "
        "edge.config is in layer edge.config",
        "edge.config imports edge.http.server (line 3): layer edge.config may import only scheduler, "
        "edge.outbound.origins; edge.http.server is in layer edge.http.server",
        f"edge.cli imports simulations.cli (line 2): {FORBIDDEN[0][2]}",
        f"cluster.swim imports tests.cluster.helpers (line 1): {FORBIDDEN[4][2]}",
    ]


def test_layers_match_most_specific_first() -> None:
    assert layer_of("edge.engine.spec").name == "edge.engine"  # type: ignore[union-attr]
    assert layer_of("edge.engine.shell.queues").name == "edge.engine.shell"  # type: ignore[union-attr]
    assert layer_of("edge.outbound.origins").name == "edge.outbound.origins"  # type: ignore[union-attr]
    assert layer_of("edge.outbound.ssrf").name == "edge.outbound"  # type: ignore[union-attr]
    assert layer_of("cluster.testing").name == "cluster.testing"  # type: ignore[union-attr]
    assert layer_of("edge.__main__").name == "edge"  # type: ignore[union-attr]
    assert layer_of("edge.somewhere_new") is None


# ---------------------------------------------------------------------------------------------------------------
# Cycles


def import_cycles(modules: Sequence[Module]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) per group of modules that import each other."""
    names = {module.name for module in modules}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for edge in all_imports(modules):
        if edge.imported in names and edge.imported != edge.importer:
            graph[edge.importer].add(edge.imported)
    return [_cycle_through(sorted(group)[0], group, graph) for group in _strongly_connected(graph) if len(group) > 1]


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the import graph is deep enough to make recursion a worry)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
    return groups


def _cycle_through(start: str, group: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """The shortest path from `start` back to itself inside `group` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & group):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is in a cycle that does not come back to it")  # Tarjan said it does


def test_no_import_cycles() -> None:
    cycles = import_cycles(project_modules())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_a_planted_cycle_is_reported_as_its_path() -> None:
    planted = [
        Module("scheduler.a", "from scheduler import b\n"),
        Module("scheduler.b", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from scheduler.c import C\n"),
        Module("scheduler.c", "def f():\n    import scheduler.a\n"),
        Module("scheduler.d", "import scheduler.a\n"),  # imports the cycle, is not in it
        Module("scheduler", "from scheduler.d import D\n", is_package=True),
    ]
    assert import_cycles(planted) == [["scheduler.a", "scheduler.b", "scheduler.c", "scheduler.a"]]


# ---------------------------------------------------------------------------------------------------------------
# Purity of the sans-I/O cores

# Modules whose import means I/O, a clock, or randomness outside the injected rng.
FORBIDDEN_IN_CORES = frozenset({"trio", "time", "socket", "asyncio", "threading", "os", "secrets", "uuid", "random"})
# Attributes that read the wall clock even through an allowed module (datetime.now, date.today).
FORBIDDEN_CLOCK_ATTRIBUTES = frozenset({"now", "utcnow", "today"})
# `from random import Random` is allowed: the class is the type of the injected rng.
ALLOWED_FROM_RANDOM = frozenset({"Random"})


def pure_module_paths(root: Path = ROOT) -> list[Path]:
    """The cores: scheduler/, the cluster core (cluster/*.py; cluster/testing.py is the harness that seeds its own
    Random instances, and cluster/shell/ is the Trio shell), and the job engine's core (edge/engine/*.py)."""
    cluster_core = [path for path in (root / "cluster").glob("*.py") if path.stem != "testing"]
    return sorted([*(root / "scheduler").glob("*.py"), *cluster_core, *(root / "edge" / "engine").glob("*.py")])


def purity_violations(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_IN_CORES]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            root = node.module.split(".")[0]
            if root == "random":
                found += [f"from random import {a.name}" for a in node.names if a.name not in ALLOWED_FROM_RANDOM]
            elif root in FORBIDDEN_IN_CORES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CLOCK_ATTRIBUTES:
            found.append(f".{node.attr}")
    return found


def runtime_random_imports(source: str) -> list[int]:
    """Lines that import from `random` outside `if TYPE_CHECKING:`; the cluster core needs `Random` only as a type,
    and importing it at run time would invite `random.random()`."""
    lines: list[int] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.ImportFrom | ast.Import) and not type_only:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(name.split(".")[0] == "random" for name in names):
                lines.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source), False)
    return lines


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_the_pure_set_is_the_one_this_file_means() -> None:
    names = {str(path.relative_to(ROOT)) for path in pure_module_paths()}
    expected = {"scheduler/gcra.py", "scheduler/fair.py", "scheduler/signals.py", "scheduler/__init__.py"}
    expected |= {"cluster/swim.py", "cluster/membership.py", "cluster/codec.py", "cluster/ownership.py"}
    expected |= {"edge/engine/spec.py", "edge/engine/records.py", "edge/engine/signing.py"}
    assert expected <= names
    assert not {"cluster/testing.py", "cluster/shell/member.py", "edge/engine/shell/queues.py"} & names


def test_the_cores_are_pure() -> None:
    violations = [
        f"{path.relative_to(ROOT)}: {found}"
        for path in pure_module_paths()
        for found in purity_violations(path.read_text(encoding="utf-8"))
    ]
    assert not violations, "\n".join(violations)


def test_the_cluster_core_imports_random_only_for_type_hints() -> None:
    core = [path for path in pure_module_paths() if path.parent.name == "cluster"]
    violations = [
        f"{path.relative_to(ROOT)}:{line}" for path in core for line in runtime_random_imports(path.read_text("utf-8"))
    ]
    assert not violations, "\n".join(violations)


def test_a_planted_impurity_is_reported() -> None:
    bad = "\n".join(["import time", "import trio.lowlevel", "from socket import socket", "from random import random"])
    bad += "\nd.now()\n"
    assert purity_violations(bad) == [
        "import time",
        "import trio.lowlevel",
        "from socket import ...",
        "from random import random",
        ".now",
    ]
    assert purity_violations("from random import Random\nimport math\nnow = 1.0\nfrom .time import x\n") == []


def test_a_planted_runtime_random_import_is_reported() -> None:
    planted = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from random import Random\n"
    assert runtime_random_imports(planted) == []
    assert runtime_random_imports(planted + "def f():\n    import random\nfrom random import Random\n") == [5, 6]


# ---------------------------------------------------------------------------------------------------------------
# The simulator seam: in edge, only edge/runtime.py reads the world

# The one module that may: it is what the node takes time, randomness and DNS from (the simulator replaces it).
WORLD_READER = ROOT / "edge" / "runtime.py"
WORLD_READS = frozenset(
    {
        ("time", "time"),
        ("time", "time_ns"),
        ("time", "monotonic"),
        ("time", "sleep"),
        ("time", "perf_counter"),
        ("random", "random"),
        ("random", "randint"),
        ("random", "randrange"),
        ("random", "choice"),
        ("random", "uniform"),
        ("random", "shuffle"),
        ("socket", "getaddrinfo"),
        ("datetime", "now"),
        ("datetime", "utcnow"),
    }
)


def world_reads(source: str) -> list[str]:
    """`time.time`-style reads of the world, and `from time/random import ...` (which would hide them), by line.
    `from random import Random` is the injected rng's type, not a read."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in WORLD_READS:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in {"time", "random"}:
            names = {alias.name for alias in node.names}
            if node.module == "time" or names - ALLOWED_FROM_RANDOM:
                found.append((node.lineno, f"from {node.module} import {', '.join(sorted(names))}"))
    return [f"{line} {what}" for line, what in sorted(found)]


def test_edge_reads_the_world_only_through_runtime() -> None:
    paths = sorted(path for path in (ROOT / "edge").rglob("*.py") if path != WORLD_READER)
    violations = [
        f"{path.relative_to(ROOT)}:{found}" for path in paths for found in world_reads(path.read_text("utf-8"))
    ]
    assert not violations, "only edge/runtime.py may read the world:\n" + "\n".join(violations)


def test_the_cluster_shell_reads_the_world_only_through_its_runtime() -> None:
    """Wall clock, RNG and resolver are injected (the simulator replaces them); monotonic time is trio's."""
    paths = sorted((ROOT / "cluster" / "shell").glob("*.py"))
    assert {path.stem for path in paths} >= {"member", "transport", "discovery"}
    violations = [
        f"{path.relative_to(ROOT)}:{found}" for path in paths for found in world_reads(path.read_text("utf-8"))
    ]
    assert not violations, "\n".join(violations)


def test_a_planted_world_read_is_reported() -> None:
    planted = "import time\nstamp = time.time()\nfrom random import choice\nfrom random import Random\n"
    assert world_reads(planted) == ["2 time.time", "3 from random import choice"]
