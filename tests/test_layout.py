"""The package's layering (README "How the code is organised"), read from the sources: the
imports between fastvae's top-level modules form no cycle, the network and what runs it never
import the model, and imports inside functions stay where the README says they are."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fastvae"
# modules that may import fastvae modules inside functions, and why (README)
LAZY_IMPORTERS = {"cli": "a command's modules load when it runs",
                  "_threads": "the CPU kernels it runs import it at their top",
                  "__init__": "everything loads on first use"}


def _fastvae_targets(node):
    """The top-level fastvae modules an import statement names ("cpu" for fastvae.cpu.x)."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 1:
            return [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        if node.level == 0 and node.module == "fastvae":
            return [a.name for a in node.names]
        if node.level == 0 and (node.module or "").startswith("fastvae."):
            return [node.module.split(".")[1]]
        return []
    return [a.name.split(".")[1] for a in node.names if a.name.startswith("fastvae.")]


def _imports():
    """{module: (imported at the top, imported inside functions)} for fastvae/*.py."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        top = {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for t in _fastvae_targets(node)}
        nested = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                  and node not in tree.body for t in _fastvae_targets(node)}
        graph[path.stem] = (top - {path.stem}, nested - top - {path.stem})
    return graph


def test_the_top_level_imports_form_no_cycle():
    graph = {name: top for name, (top, _) in _imports().items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(name):] + [name])}")
        if name in done or name not in graph:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)
    for name in graph:
        visit(name)


@pytest.mark.parametrize("module", ["network", "train", "eval", "checkpoint", "optim"])
def test_the_network_and_what_runs_it_do_not_import_the_model(module):
    top, nested = _imports()[module]
    assert "model" not in top | nested, f"fastvae/{module}.py imports fastvae/model.py"


def test_imports_inside_functions_only_where_the_readme_says():
    nested = {name: sorted(inner) for name, (_, inner) in _imports().items() if inner}
    unexpected = {name: inner for name, inner in nested.items() if name not in LAZY_IMPORTERS}
    assert not unexpected, f"fastvae modules imported inside functions: {unexpected}"
    assert nested.get("_threads", []) in ([], ["cpu"]), nested.get("_threads")
