"""ruff (lint and format), configured in pyproject.toml, is part of the test run."""

from __future__ import annotations

import ast
import functools
import shutil
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed")


def test_ruff_check_is_clean():
    out = subprocess.run([*_ruff(), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_ruff_format_is_clean():
    out = subprocess.run([*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


# -- issue 11's limits: small modules, short functions, no import cycle -----------------------------
SRC = ROOT / "src" / "attnviz"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80  # the body: a Typer command's long signature does not count


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@functools.cache  # the tree is read once a session, whichever tests ask
def _long_functions(path: Path) -> dict[str, int]:
    """`module.py:Class.function` -> body lines, for every function whose body is over the limit."""
    return _long_in(path.read_text(encoding="utf-8"), path.relative_to(SRC).as_posix())


def _long_in(source: str, label: str) -> dict[str, int]:
    tree = ast.parse(source)
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}" if prefix else child.name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.body[0].lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found[f"{label}:{name}"] = lines
            visit(child, name)

    visit(tree, "")
    return found


# -- issue 20's layer map: every import, at the top or inside a function, points down ----------------
# Bottom to top. A module may import its own layer and those below; the cycle test keeps a layer's
# modules from importing each other in a loop. A module belongs to its longest entry (`views.server`
# is an app though `views` is pictures). A NEW MODULE goes in the lowest layer above everything it
# imports: a type or helper with no model -> core; a model loader -> models; texts -> numbers
# (needs a model or an Attention) -> analyses; a figure or page -> pictures; a long run or a
# server -> apps; a command -> cli. The package root is core: its re-exports are lazy, and nothing
# of ours imports them (import from the module that defines a name; `__version__` is the exception).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("", "errors", "selection", "outputs", "tokens")),
    ("attention", ("attention",)),
    ("models", ("models",)),
    ("extraction", ("extraction",)),
    ("analyses", ("heads", "analyses", "generation")),
    ("pictures", ("plots", "views")),
    ("apps", ("batch", "server")),
    ("cli", ("cli",)),
)
# The tree is the map: beside the package root, only these modules stand flat (what every layer
# uses, and extraction, a layer of one module); everything else lives in its layer's folder.
FLAT = {
    "attnviz.errors",
    "attnviz.selection",
    "attnviz.outputs",
    "attnviz.tokens",
    "attnviz.attention",
    "attnviz.extraction",
}
# The one upward edge: Jupyter's display hook, `_repr_html_`, may reach up for the notebook view
# (a result type knows how to be shown without depending on the views when it is not shown).
ALLOWED_UPWARD = {("_repr_html_", "attnviz.views.notebook")}
# Pictures never load or run a model: these modules may not import what does (views.server may);
# from extraction they may take `tokenize` alone (views.html counts a text's tokens for its size).
NO_MODEL = ("attnviz.plots", "attnviz.views.html", "attnviz.views.notebook")
MODEL_MODULES = ("attnviz.models", "attnviz.extraction")
TOKENISING_ONLY = {("attnviz.extraction", "tokenize")}


@dataclass(frozen=True)
class Import:
    """One import of a package module: where it is, inside which function, and what it names."""

    importer: str
    target: str  # the module imported (a submodule when `from pkg import sub`)
    line: int
    function: str  # the innermost enclosing function, "" at module level
    names: tuple[str, ...]  # the names taken (`from x import a, b`), () for `import x`


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _all_imports(name: str, source: str, modules: Collection[str], package: bool) -> list[Import]:
    """Every import of one of `modules`, at any depth, skipping `if TYPE_CHECKING:` bodies."""
    found: list[Import] = []

    def target_of(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for sub in child.orelse:  # `else:` runs; the `if` body never does
                    visit_one(sub, function)
                continue
            visit_one(child, function)

    def visit_one(child: ast.AST, function: str) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                if alias.name in modules:
                    found.append(Import(name, alias.name, child.lineno, function, ()))
        elif isinstance(child, ast.ImportFrom):
            module = target_of(child)
            if module in modules:
                for alias in child.names:  # `from attnviz.x import y`: y may be a submodule itself
                    sub = f"{module}.{alias.name}"
                    target = sub if sub in modules else module
                    found.append(Import(name, target, child.lineno, function, (alias.name,)))
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = child.name
        visit(child, function)

    visit(ast.parse(source), "")
    return found


def _imports_of(name: str, path: Path, modules: Collection[str]) -> list[Import]:
    return _all_imports(name, path.read_text(encoding="utf-8"), modules, path.name == "__init__.py")


@functools.cache
def _every_import() -> tuple[Import, ...]:
    modules = _modules()
    return tuple(imp for name, path in modules.items() for imp in _imports_of(name, path, modules))


def _layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of a module's layer (its longest matching entry), or None if it has none."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            full = f"attnviz.{prefix}" if prefix else "attnviz"  # "": the package root alone
            inside = bool(prefix) and module.startswith(full + ".")
            if (module == full or inside) and len(full) > best_len:
                best, best_len = i, len(full)
    return best


def _parents(module: str) -> list[str]:
    """The packages importing `module` also runs (`attnviz.batch` for `attnviz.batch.store`)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _upward(imports: Collection[Import], modules: Collection[str], layers=LAYERS) -> list[str]:
    """Imports that reach a higher layer (a package's `__init__` counts), as readable lines."""
    bad = []
    for imp in imports:
        if (imp.function, imp.target) in ALLOWED_UPWARD:
            continue
        own = _layer_of(imp.importer, layers)
        for target in [imp.target, *(p for p in _parents(imp.target) if p in modules)]:
            theirs = _layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                where = f" in {imp.function}()" if imp.function else ""
                bad.append(
                    f"{imp.importer}:{imp.line}{where} ({layers[own][0]}) imports {target} "
                    f"({layers[theirs][0]}): move the code, or the import, down"
                )
    return bad


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules a module imports at run time, at any depth (the one upward edge left out)."""
    name = next(k for k, v in modules.items() if v == path)
    return {
        i.target for i in _imports_of(name, path, modules) if (i.function, i.target) not in ALLOWED_UPWARD
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_module_is_over_the_line_limit():
    """No allow-list: a module over the limit is split, not excused (the old empty lists could not fail)."""
    long = {
        path.relative_to(SRC).as_posix(): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_body_is_over_the_line_limit():
    long = {k: v for path in _modules().values() for k, v in _long_functions(path).items()}
    assert long == {}


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_checks_can_fail():
    """The helpers find a planted long function and a planted cycle."""
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    source = f"def short(\n    a,\n    b,\n):\n    return 1\n\n\nclass K:\n    def long(self):\n{body}\n"
    assert _long_in(source, "m.py") == {"m.py:K.long": MAX_FUNCTION_LINES + 1}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    lost = [name for name in _modules() if _layer_of(name) is None]
    assert not lost, (
        f"{', '.join(lost)} in no layer: add each to LAYERS in tests/test_style.py, in the lowest "
        "layer above everything it imports (the comment above LAYERS says which)"
    )


def test_every_import_points_down_the_layers():
    """At the top of a module or inside a function (TYPE_CHECKING skipped), bar `_repr_html_`."""
    modules = _modules()
    assert _upward(_every_import(), modules) == []


def test_pictures_never_import_what_runs_a_model():
    bad = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in _every_import()
        if i.importer.startswith(NO_MODEL)
        and i.target.startswith(MODEL_MODULES)
        and not (i.names and all((i.target, n) in TOKENISING_ONLY for n in i.names))
    ]
    assert bad == []


def test_nothing_takes_a_name_from_the_lazy_package_root():
    """`from attnviz import load_model` inside the package would hide a real dependency."""
    bad = [
        f"{i.importer}:{i.line} takes {i.names} from attnviz"
        for i in _every_import()
        if i.target == "attnviz" and set(i.names) - {"__version__"}
    ]
    assert bad == []


def test_result_types_are_imported_from_attention_py():
    """`Attention`, `QKV` and `Encoded` live in attention.py; extraction.py only re-exports them."""
    bad = []
    files = [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "attnviz.extraction":
                taken = {a.name for a in node.names} & {"Attention", "QKV", "Encoded"}
                if taken:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(taken)}")
    assert bad == []


def test_the_layer_checks_can_fail():
    """A planted upward import inside a function is found; TYPE_CHECKING and `_repr_html_` are not."""
    layers = (("low", ("low",)), ("high", ("high",)))
    modules = {"attnviz.low", "attnviz.high", "attnviz.high.sub"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from attnviz.high import Thing\n"
        "def f():\n    from attnviz.high.sub import g\n"
        "class C:\n    def _repr_html_(self):\n        from attnviz.views.notebook import x\n"
    )
    found = _all_imports("attnviz.low", source, {*modules, "attnviz.views.notebook"}, package=False)
    assert [(i.target, i.function, i.line) for i in found] == [
        ("attnviz.high.sub", "f", 5),
        ("attnviz.views.notebook", "_repr_html_", 8),
    ]
    bad = _upward(found, modules, layers)
    assert len(bad) == 2 and bad[0].startswith("attnviz.low:5 in f() (low) imports attnviz.high.sub (high)")
    assert "imports attnviz.high (high)" in bad[1]  # the package __init__ that import runs
    assert _layer_of("attnviz.new_module") is None
    assert _layer_of("attnviz.server.app") > _layer_of("attnviz.views.html")


def test_the_one_upward_edge_is_used_and_nothing_else_is_allowed():
    """The allow-list is one named edge; if no `_repr_html_` needs it any more, it must go."""
    assert {("_repr_html_", "attnviz.views.notebook")} == ALLOWED_UPWARD
    users = {i.importer for i in _every_import() if (i.function, i.target) in ALLOWED_UPWARD}
    assert users >= {"attnviz.attention", "attnviz.heads.search"}


def _home_of(module: str, imports: Collection[Import], layers=LAYERS) -> str:
    """The folders of the lowest layer above everything `module` imports: where a flat module belongs."""
    needed = max((_layer_of(i.target, layers) or 0 for i in imports if i.importer == module), default=0)
    folders = [p for p in layers[needed][1] if p and p not in {m.split(".")[-1] for m in FLAT}]
    return " or ".join(f"src/attnviz/{p}/" for p in folders) or "a flat module (add it to FLAT)"


def _misplaced(modules: Collection[str], imports: Collection[Import], layers=LAYERS) -> list[str]:
    """Flat modules (files beside the package root, not packages) outside FLAT, each with its folder."""
    packages = {m.rpartition(".")[0] for m in modules}
    flat = [m for m in modules if m.count(".") == 1 and m not in FLAT and m not in packages]
    return [f"{m} stands flat: move it into {_home_of(m, imports, layers)}" for m in sorted(flat)]


def test_every_module_sits_in_its_layers_folder():
    """Folders are layers: a new flat module fails with the folder it belongs in."""
    modules = _modules()
    assert _misplaced(modules, _every_import()) == []


def test_a_misplaced_module_is_named_with_its_folder():
    imports = [Import("attnviz.newthing", "attnviz.models.loading", 1, "", ("load_model",))]
    bad = _misplaced({"attnviz", "attnviz.errors", "attnviz.newthing"}, imports)
    assert bad == ["attnviz.newthing stands flat: move it into src/attnviz/models/"]
    imports = [Import("attnviz.other", "attnviz.heads.search", 1, "", ("find_heads",))]
    bad = _misplaced({"attnviz.other"}, imports)
    assert bad == [
        "attnviz.other stands flat: move it into src/attnviz/heads/ or src/attnviz/analyses/ or "
        "src/attnviz/generation/"
    ]


@pytest.mark.parametrize(
    ("where", "banned"), [("src/attnviz/cli/new.py", True), ("src/attnviz/plots/new.py", False)]
)
def test_cli_may_not_import_heavy_libraries_at_module_level(where, banned):
    """The lazy-import habit is a lint rule (ruff TID253, pyproject.toml) for cli/, not a memory."""
    source = "import numpy as np\n\n\ndef f():\n    import torch\n\n    return np, torch\n"
    out = subprocess.run(
        [*_ruff(), "check", "--stdin-filename", where, "-"],
        input=source,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ("TID253" in out.stdout) is banned, out.stdout
    assert out.stdout.count("TID253") <= 1  # the import inside the function is fine


@pytest.mark.parametrize(
    "rule",
    [
        "clustering needs at least two texts",  # analyses/cluster.check_enough_texts
        "unknown {param('store')}",  # models/capture.check_store
        "unknown {param('direction')}",  # heads/search.check_direction
        "': use self or cross",  # generation/transform.check_stream (was in cli/generate.py too)
        "fuses every head itself",  # generation/options.GenerateOptions.check (was the CLI's alone)
        "ablates every head in turn: drop",  # heads/ablation_options.AblationOptions.check
    ],
)
def test_each_repeated_check_is_written_once(rule):
    """Issue 28: the CLI, the server and the library each had their own copy of these checks."""
    found = [
        p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if rule in p.read_text(encoding="utf-8")
    ]
    assert len(found) == 1, found
    texts = {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}
    for needle in ("direction not in DIRECTIONS", "store not in STORES"):
        assert sum(text.count(needle) for text in texts.values()) == 1, needle
    assert not [
        name for name, text in texts.items() if "unknown --store" in text or "unknown --direction" in text
    ]


# What a rule about values says; each is the library's now (issue 28), so cli/ must not say it again.
# cli/ keeps what only a command line has: reading the text, flags that go together.
LIBRARY_RULES = (
    "use 0-10",  # analyses/steps.check_decimals (cli/pictures.py had it twice)
    "between 10 and 1200",  # plots check_pixels (the dpi)
    "above 0 megabytes",  # views/html.check_page_options
    "unknown --view",  # views/html.check_page_options
    "use self or cross",  # generation/transform.check_stream
    "fuses every head itself",  # generation/options.GenerateOptions
    "ablates every head in turn",  # heads/ablation_options.AblationOptions
    "say which head to ablate",  # heads/ablation_options.AblationOptions
    "is not divisible by",  # analyses/toy.build_toy
    "give a count of 1 or more",  # analyses/toy.parse_tokens
    "unknown --sort",  # heads/patterns.check_sort
    "use 1 or more",  # analyses/cluster.check_groups, extraction.check_sizes
    "(all heads) or more",  # heads/search.check_top
    "or --overwrite (replace it)",  # batch/store.check_resume
    "--key needs --query",  # analyses/explain.check_focus
)


def test_the_cli_states_no_rule_the_library_holds():
    """Issue 28: a rule about values lives once, in the library (an options object's `check()` or
    the function itself); the CLI builds the options and lets the library's one line through."""
    cli = {p.name: p.read_text(encoding="utf-8") for p in (SRC / "cli").glob("*.py")}
    found = [(rule, name) for rule in LIBRARY_RULES for name, text in cli.items() if rule in text]
    assert not found, found
