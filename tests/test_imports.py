"""The package's rooms: no import circles, every module importable first, upstream touched only by
``open_clip_c2lip.integration``, and the method modules free of process state."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "open_clip_c2lip"
# the method: configuration comes in as arguments, never from open_clip_train or process state
METHOD_MODULES = ("open_clip_c2lip.config", "open_clip_c2lip.layout", "open_clip_c2lip.model",
                  "open_clip_c2lip.loss", "open_clip_c2lip.xac", "open_clip_c2lip.packing",
                  "open_clip_c2lip.registry")


def module_names():
    """Every module of the package (``__main__`` modules left out: importing one runs its CLI)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _path(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports_of(module: str):
    """Modules ``module`` imports anywhere in its source (top level and inside functions), absolute."""
    is_package = _path(module).name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(_path(module).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # "from pkg import module"
    return found


def package_graph():
    """``{module: {package modules it imports}}``; importing ``a.b.c`` also imports ``a`` and ``a.b``."""
    names = set(module_names())
    graph = {}
    for module in names:
        edges = set()
        for target in imports_of(module):
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in names)
        edges.discard(module)
        graph[module] = {m for m in edges if not module.startswith(m + ".")}  # a package's own parents
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_import_graph_has_no_cycle():
    """Counting lazy (function-level) imports too: no module depends on itself."""
    graph = package_graph()
    assert "open_clip_c2lip.integration.wds" in graph and graph["open_clip_c2lip.integration.wds"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_only_the_integration_package_imports_open_clip_train():
    outside = {m: sorted(t for t in imports_of(m) if t.split(".")[0] == "open_clip_train")
               for m in module_names() if not m.startswith("open_clip_c2lip.integration")}
    assert {m: t for m, t in outside.items() if t} == {}


def test_the_method_reads_no_process_state():
    """The method modules import nothing of the integration package (where the parsed configuration
    lives) and nothing of open_clip_train."""
    graph = package_graph()
    for module in METHOD_MODULES:
        reached, todo = set(), [module]
        while todo:  # everything the method module imports, transitively
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not any(m.startswith("open_clip_c2lip.integration") for m in reached), (module, sorted(reached))
        assert not any(t.startswith("open_clip_train") for t in imports_of(module)), module


def test_data_order_is_generic():
    """The data order fix is an upstream fix: it imports no C2LIP code."""
    assert not {t for t in imports_of("open_clip_c2lip.integration.data_order") if t.startswith("open_clip_c2lip")
                and t not in ("open_clip_c2lip", "open_clip_c2lip.integration")}


_IMPORT_ALL = r"""
import json, logging, sys
records = []
logging.basicConfig(handlers=[type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})()])
import importlib
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
import open_clip
print(json.dumps({"registered": "C2LIP-Tiny" in open_clip.list_models(),
                  "hooked": getattr(open_clip.create_model, "__c2lip_wrapped__", False),
                  "warnings": [m for m in records if "open_clip_c2lip" in m]}))
"""


@pytest.mark.parametrize("order", ["alphabetical", "reverse"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    """All modules imported one after another, in both orders: no import fails, no hook fails half-way
    (a module importing ``open_clip`` runs the hook, which imports integration modules)."""
    names = module_names() if order == "alphabetical" else module_names()[::-1]
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(names)], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"registered": True, "hooked": True, "warnings": []}, report


@pytest.mark.slow
@pytest.mark.parametrize("module", module_names())
def test_each_module_can_be_imported_first(module):
    """Any module first in a new process: the open_clip hook it may trigger finds its modules whole."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps([module])], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"registered": True, "hooked": True, "warnings": []}, (module, report)
