"""The import graph of the project's own modules: a tree with layers, read from the source (nothing is imported).

Rules (a failure names the file, the line and the rule):

* no cycle between modules;
* ``mcm/`` (the host-independent core) imports neither ``nodes`` nor ``training``; ``nodes`` never ``training``;
* the trainer reaches the toy (``training/toy/``) only through its face, ``training.toy`` (the two hooks: the toy
  data and the toy evaluation), and only from ``training/config.py``, ``training/setup.py`` and
  ``training/distill.py``; ``training/validation.py`` and ``training/evaluate.py`` import nothing of the toy;
* an import between the project's own modules sits at the top of its file, never inside a function, unless the
  module it imports needs ComfyUI at import time (it imports ``comfy``/``comfy_api``/``folder_paths`` at its top).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mcm", "nodes", "training")
#: Absolute imports of these name the project's packages; ``nodes`` is reached only by relative imports (an absolute
#: ``import nodes`` is ComfyUI's own nodes.py).
ABSOLUTE = ("mcm", "training")
HOST_PACKAGES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "nodes", "server")
TOY_HOOK_USERS = {"training.config", "training.setup", "training.distill"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)  # the repository root's __init__.py is the package "" (ComfyUI loads it so)


def project_files() -> dict[str, Path]:
    files = {"": ROOT / "__init__.py"}
    for folder in (*PACKAGES, "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[module_name(path)] = path
    return files


FILES = project_files()


def resolve(importer: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement names (``from pkg import submodule`` counts the submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] in ABSOLUTE]
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    if node.level:
        base = package.split(".") if package else []
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        if node.level - 1 > len(package.split(".") if package else []):
            raise AssertionError(f"{path}:{node.lineno}: a relative import above the repository root")
        stem = ".".join([*base, node.module] if node.module else base)
    else:
        stem = node.module or ""
        if stem.split(".")[0] not in ABSOLUTE:
            return []
    found = [f"{stem}.{alias.name}".lstrip(".") for alias in node.names if f"{stem}.{alias.name}".lstrip(".") in FILES]
    return found or [stem]


def imports(name: str) -> list[tuple[str, int, bool]]:
    """``(target module, line, inside a function)`` for every project import of module ``name``."""
    path = FILES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((target, child.lineno, in_function) for target in resolve(name, path, child))
            visit(child, inner)

    visit(tree, False)
    return out


def top_level_third_party(name: str) -> set[str]:
    tree = ast.parse(FILES[name].read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


GRAPH = {name: imports(name) for name in FILES}


def test_the_graph_is_read_from_real_imports():
    """The reader sees the imports this test relies on (a reader that saw nothing would pass every rule)."""
    edges = {(a, b) for a, targets in GRAPH.items() for b, _, _ in targets}
    assert ("training.distill", "training.toy") in edges  # from training import toy
    assert ("nodes.glue.sampling", "mcm.sampler") in edges  # a relative import, three dots up
    assert ("training.toy", "training.toy.evaluation") in edges
    assert ("mcm.sampler", "mcm.solver") in edges


def test_no_import_cycle():
    edges = {a: sorted({b for b, _, _ in targets if b in FILES and b != a}) for a, targets in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongly_connected(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongly_connected(w)
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            strongly_connected(v)
    assert cycles == [], f"modules that import each other: {cycles}"


def _breaks(rule) -> list[str]:
    return [
        f"{FILES[a].relative_to(ROOT)}:{line} imports {b}"
        for a, targets in GRAPH.items()
        for b, line, _ in targets
        if rule(a, b)
    ]


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_layers():
    assert _breaks(lambda a, b: _under(a, "mcm") and (_under(b, "nodes") or _under(b, "training"))) == []
    assert _breaks(lambda a, b: _under(a, "nodes") and _under(b, "training")) == []


def test_the_trainer_reaches_the_toy_only_through_its_two_hooks():
    def trainer(a: str) -> bool:
        return _under(a, "training") and not _under(a, "training.toy")

    assert _breaks(lambda a, b: trainer(a) and _under(b, "training.toy") and b != "training.toy") == []
    assert _breaks(lambda a, b: trainer(a) and b == "training.toy" and a not in TOY_HOOK_USERS) == []
    for module in ("training.validation", "training.evaluate"):
        assert not any(_under(b, "training.toy") for b, _, _ in GRAPH[module]), module


def test_imports_between_project_modules_sit_at_the_top_of_the_file():
    needs_host = {name for name in FILES if top_level_third_party(name) & set(HOST_PACKAGES)}
    inside = [
        f"{FILES[a].relative_to(ROOT)}:{line} imports {b} inside a function"
        for a, targets in GRAPH.items()
        for b, line, in_function in targets
        if in_function and b not in needs_host
    ]
    assert inside == []


@pytest.mark.parametrize("name", ["training.validation", "training.evaluate", "mcm.sampler"])
def test_named_modules_exist(name):
    assert name in FILES
