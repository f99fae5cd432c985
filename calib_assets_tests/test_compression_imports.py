"""The modules of calib_assets/compression import one another one way only: no cycle, function-local
imports included, each module's imports in an earlier (or its own) layer, and each module importable on
its own, without the package's __init__ having imported the others first."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import calib_assets.compression

PACKAGE = "calib_assets.compression"
FOLDER = Path(calib_assets.compression.__file__).parent
MODULES = sorted(path.stem for path in FOLDER.glob("*.py") if path.stem != "__init__")

# packing -> result -> quantizer -> obs -> methods -> engine -> checkpoint -> export: a module may import from its
# own layer or an earlier one.
LAYERS = [
    {"packing", "config", "attention"},  # import nothing of the package
    {"result"},
    {"quantizer"},
    {"obs", "layerwise"},
    {"rtn", "magnitude", "wanda", "gptq", "sparsegpt", "spqr", "awq"},
    {"engine"},
    {"checkpoint", "pack_quantized"},  # our storage, and compressed-tensors' layout of the same results
    {"export"},
]


def imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (function bodies included)."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                targets = [node.module] if node.module else [alias.name for alias in node.names]
            elif node.level == 0 and node.module and node.module.startswith(PACKAGE + "."):
                targets = [node.module[len(PACKAGE) + 1:]]
            elif node.level == 0 and node.module == PACKAGE:
                targets = [alias.name if alias.name in MODULES else "__init__" for alias in node.names]
            else:
                continue
        elif isinstance(node, ast.Import):
            targets = [alias.name[len(PACKAGE) + 1:] for alias in node.names if alias.name.startswith(PACKAGE + ".")]
        else:
            continue
        found.update(target.split(".")[0] for target in targets)
    return found - {module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    assert sorted(set().union(*LAYERS)) == MODULES


def test_the_import_graph_has_no_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_imports_run_one_way_through_the_layers():
    layer_of = {module: index for index, layer in enumerate(LAYERS) for module in layer}
    wrong = [f"{module} -> {target}" for module in MODULES for target in sorted(GRAPH[module])
             if target not in layer_of or layer_of[target] > layer_of[module]]
    assert not wrong, f"imports against the layers {LAYERS}: {wrong}"


ALONE = """
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec({package!r})
package = types.ModuleType({package!r})  # the package without running its __init__
package.__path__ = list(spec.submodule_search_locations)
sys.modules[{package!r}] = package
importlib.import_module({package!r} + "." + {module!r})
print(json.dumps(sorted(name.rsplit(".", 1)[1] for name in sys.modules if name.startswith({package!r} + "."))))
"""


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen | {module}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    """Without the package's __init__ (which imports every module), a module needs exactly what it
    imports: it loads, and what it loads at import time is within its static import graph."""
    done = subprocess.run([sys.executable, "-c", ALONE.format(package=PACKAGE, module=module)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert module in loaded and loaded <= _closure(module), sorted(loaded - _closure(module))


def test_the_package_imports_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", f"import {PACKAGE}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
