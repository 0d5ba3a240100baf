"""The import rule of docs/architecture.md, read from the source: every module of qproxy/ and
qiskit_slurm_provider/ is parsed with ``ast`` (imports inside functions and under
TYPE_CHECKING count too: a lazy import is still an arrow), and the package graph must have

- no import cycle between modules, and
- no arrow from a lower layer to a higher one (``LAYERS``, lowest first), and nothing from
  the parts kept apart (``APART``) but what they are allowed.

A new module lands in the layer of its package; a new top-level module must be placed in the
table (the test says so).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qproxy", "qiskit_slurm_provider")

# Lowest first: a module may import its own layer and the ones below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("qproxy", "qproxy.files", "qproxy.records", "qproxy.runtime_api",
              "qproxy.config", "qproxy.secrets", "qproxy.clientenv", "qproxy.slurmcli")),
    ("node", ("qproxy.node",)),  # root-side facilities: audit, ledger, process, ports...
    ("upstream", ("qproxy.upstream",)),  # the vendor seam; uses node (peer, ledger)
    ("proxy", ("qproxy.proxy",)),  # one job's proxy process
    ("slurm", ("qproxy.slurm",)),  # the root hooks: start and stop proxies
    ("admin", ("qproxy.admin",)),  # admin commands
    ("cli", ("qproxy.cli", "qproxy.__main__")),  # the dispatcher
]
# Apart from the data path: each may import the base layer, itself, and what is named here.
APART: dict[str, tuple[str, ...]] = {
    "qproxy.client": (),  # runs in the user's job
    "qiskit_slurm_provider": ("qproxy.client",),  # the facade over client/slurm_mode
    # the local QPU; its admin client (`qproxy emulator device`) sends the emulator's key
    # only past the proxy's listener-owner check
    "qproxy.emulator": ("qproxy.upstream.guard",),
}


def _in(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or inside it; the top package ``qproxy`` names only its own
    ``__init__`` (a new module or package under it must be placed in the table)."""
    return module == prefix or (prefix != "qproxy" and module.startswith(prefix + "."))


def _layer(module: str) -> str:
    """The layer (or APART group) of a module: the longest matching prefix wins."""
    best, name = "", ""
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if _in(module, p) and len(p) > len(best):
                best, name = p, layer
    for group in APART:
        if _in(module, group) and len(group) > len(best):
            best, name = group, group
    return name


def _rank(layer: str) -> int:
    return [name for name, _ in LAYERS].index(layer)


def modules(root: Path = ROOT) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, source: str, known: Iterable[str]) -> set[str]:
    """The known modules ``module`` imports, anywhere in its body."""
    known = set(known)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `import a.b.c` where only a.b is ours
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)

    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` names the submodule
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
    return out


def graph(root: Path = ROOT, extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the modules it imports; ``extra`` (module -> source) replaces or adds
    sources (the test of the test)."""
    mods = modules(root)
    sources = {m: p.read_text() for m, p in mods.items()} | (extra or {})
    paths = mods | {m: root / (m.replace(".", "/") + ".py") for m in (extra or {})
                    if m not in mods}
    return {m: imports_of(m, paths[m], src, sources) for m, src in sources.items()}


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's own
    ``__init__`` importing from its children, or a child from its package, is not counted:
    Python imports the parent first either way."""
    edges = {m: {t for t in ts if t not in _parents(m) and m not in _parents(t)}
             for m, ts in g.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(g.items()):
        s = _layer(src)
        for dst in sorted(targets):
            d = _layer(dst)
            if not s or not d:
                bad.append(f"{src} -> {dst}: {src if not s else dst} is in no layer "
                           "(add it to LAYERS or APART in tests/unit/test_imports.py)")
            elif s in APART:
                if d != s and d != "base" and not any(_in(dst, a) for a in APART[s]):
                    bad.append(f"{src} -> {dst}: {s} may import only the base layer"
                               + (f" and {', '.join(APART[s])}" if APART[s] else ""))
            elif d in APART:
                if s != "cli":  # the dispatcher names every command
                    bad.append(f"{src} -> {dst}: {d} is apart from the {s} layer")
            elif _rank(d) > _rank(s):
                bad.append(f"{src} -> {dst}: {s} may not import the higher layer {d}")
    return bad


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_no_arrow_up() -> None:
    assert violations(graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if not _layer(m)] == []
    assert _layer("qproxy.newthing") == "" and _layer("qproxy.node.newthing") == "node"


@pytest.mark.parametrize(("module", "source", "expected"), [
    # a node facility reaching up into the proxy, lazily inside a function
    ("qproxy.node.ports", "def f():\n    from qproxy.proxy import serve\n",
     "qproxy.node.ports -> qproxy.proxy.serve: node may not import the higher layer proxy"),
    # job-side code importing the root hooks
    ("qproxy.client.qrun", "from qproxy.slurm.state import JobState\n",
     "qproxy.client.qrun -> qproxy.slurm.state: qproxy.client may import only the base layer"),
    # the config importing the upstream seam (the circle this rule broke)
    ("qproxy.config", "from qproxy.upstream import KINDS\n",
     "qproxy.config -> qproxy.upstream: base may not import the higher layer upstream"),
])
def test_a_planted_upward_import_fails(module: str, source: str, expected: str) -> None:
    original = modules()[module].read_text()
    assert expected in violations(graph(extra={module: original + "\n" + source}))


def test_a_planted_cycle_fails() -> None:
    planted = modules()["qproxy.files"].read_text() + "\nfrom qproxy import records\n"
    g = graph(extra={"qproxy.files": planted,
                     "qproxy.records": "from qproxy.files import atomic_write\n"})
    assert ["qproxy.files", "qproxy.records"] in cycles(g)
