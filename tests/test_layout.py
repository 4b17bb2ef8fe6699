"""The package layout stays layered: no package cycle, no upward import, imports at module top.

docs/architecture.md draws the layers; this test is what keeps them true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rewardlab"

# package (or top-level module) -> layer; a module may import only from layers <= its own
# (same layer: only its own package; see ALLOWED_SAME_LAYER for the two ground-floor pairs)
LAYERS = {
    "io": 0, "config": 0, "registry": 0, "stats": 0,
    "data": 1,
    "grading": 2,
    "models": 3,
    "rewards": 4,
    "training": 4,
    "reward_models": 5,
    "eval": 6,
    "sft": 7, "rl": 7, "preference": 7,
    "demo": 8,
    "cli": 9, "__main__": 10, "__init__": 10,
}
ALLOWED_SAME_LAYER = {("config", "io")}
# Function-local `rewardlab` imports allowed (module, imported module): each must carry a comment
# saying why (an optional heavy dependency or start-up time). Keep this list short.
ALLOWED_LOCAL: set[tuple[str, str]] = set()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path):
    """(imported rewardlab module, is_top_level) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "rewardlab":
            yield node.module, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "rewardlab":
                    yield a.name, id(node) in top


MODULES = dict(_modules())


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        src = _package(mod)
        for target, _ in _imports(path):
            dst = _package(target)
            if dst != src and dst != "__init__":
                g.setdefault(src, set()).add(dst)
    return g


def test_every_package_has_a_layer():
    pkgs = {_package(m) for m in MODULES}
    assert pkgs <= set(LAYERS), f"packages without a layer: {sorted(pkgs - set(LAYERS))}"


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``g`` meets, as node lists that start and end alike."""
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(g.get(n, ())):
            visit(m)
        stack.pop()

    for n in sorted(g):
        visit(n)
    return cycles


def test_find_cycles_sees_a_cycle_and_only_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}}) == []


def test_no_package_cycle():
    cycles = find_cycles(_graph())
    assert not cycles, "package import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_imports_only_go_down():
    bad = []
    for src, dsts in _graph().items():
        for dst in dsts:
            if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src]
                                              and (src, dst) not in ALLOWED_SAME_LAYER):
                bad.append(f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})")
    assert not bad, "\n".join(sorted(bad))


def test_rewardlab_imports_sit_at_module_top():
    local = sorted({(mod, target) for mod, path in MODULES.items()
                    for target, top in _imports(path) if not top} - ALLOWED_LOCAL)
    assert not local, "function-local rewardlab imports (move them to the top): " + ", ".join(
        f"{m} → {t}" for m, t in local)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports(module):
    import importlib
    importlib.import_module(module)


def test_package_exports_the_main_entry_points():
    import rewardlab
    for name in rewardlab.__all__:
        assert getattr(rewardlab, name) is not None, name
    assert rewardlab.refine("clip", [0.9, 0.5], eta=0.8) == pytest.approx([0.0, -0.3])
    assert "clip_delta" in rewardlab.REFINERS and "gae" in rewardlab.ADVANTAGES


def test_python_dash_m_rewardlab_runs_the_cli():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "rewardlab", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout and "train-rm" in r.stdout
