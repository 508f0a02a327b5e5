"""The library's shape: no import loop, no import from a lower layer to a higher one, no module over 500 lines.

Imports are read from the source (every ``import nnaug...`` and ``from nnaug... import``, the ones inside
functions too: a deferred import is still a dependency). The layers, bottom to top, are docs/architecture.md's.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "nnaug"
MAX_LINES = 500

# bottom to top; a module may import its own layer and the layers below it
LAYERS = [
    ("foundation", ["errors", "choices", "io", "stats", "masks", "mask_augment", "parameterisation", "visualize",
                    "_torchvision_compat", "split", "overlap", "nnunet_paths"]),
    ("data", ["dataset", "provenance", "example", "convert", "dataset_images", "nnunet_results"]),
    ("generators", ["generators", "samplers", "scheduler_variants", "generator_training", "train_generator",
                    "distill_generator"]),
    ("nnU-Net training", ["nnunet_pretraining", "nnunet_mixing"]),
    ("measures", ["mask_consistency", "frd", "fidelity", "memorisation", "mask_realism", "coverage"]),
    ("synthesis", ["synthesis"]),
    ("report", ["report"]),
    ("experiment", ["experiment", "sweep", "demo"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {_resolve(a.name, modules) for a in node.names if a.name.startswith("nnaug.")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nnaug"):
                for a in node.names:  # `from nnaug.x import y`: y may be a module of its own
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in modules else _resolve(node.module, modules))
        graph[name] = deps - {None, name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    for level, (_, names) in enumerate(LAYERS):
        if top in names:
            return level
    return None


def test_no_import_loop():
    assert _cycles(import_graph()) == []


def test_a_loop_is_found():
    """The check itself: a planted loop of three and a lone self-import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer_and_imports_only_downward():
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != "nnaug" and layer_of(m) is None)
    assert not unplaced, f"put these in a layer of LAYERS (and docs/architecture.md): {unplaced}"
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                    for a, deps in graph.items() for b in deps
                    if a != "nnaug" and b != "nnaug" and layer_of(b) > layer_of(a))
    assert not upward, upward


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_results_layout_and_the_parameterisation_have_one_owner():
    """The nnU-Net results tree's names and the x0/eps/v formulas are written in one module each."""
    sources = {name: path.read_text() for name, path in _modules().items()}
    layout = [n for n, s in sources.items() if '"checkpoint_final.pth"' in s or '"summary.json"' in s
              or '/ "nnaug" /' in s]
    assert layout == ["nnaug.nnunet_results"], layout
    # a function of the diffusion algebra outside nnaug.parameterisation must hand the work to it
    algebra_names = {"q_sample", "predict_x0_from_eps", "x0_from_eps", "eps_from_x0", "x0_from_v", "eps_from_v",
                     "v_target", "flow_interpolate", "flow_velocity"}
    own_copies = []
    for name, text in sources.items():
        if name == "nnaug.parameterisation":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name in algebra_names and "parameterisation" not in ast.unparse(node):
                own_copies.append(f"{name}.{node.name}")
    assert not own_copies, own_copies
