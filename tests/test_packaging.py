"""pyproject.toml tells the truth: every import is declared (and every dependency used), peft is
an extra, torch is a plain requirement (the CPU pin lives in the Makefile), the licence is an
SPDX string and the version ranges match the code."""

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# import name -> distribution name
DIST = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers",
        "safetensors": "safetensors", "datasets": "datasets", "accelerate": "accelerate",
        "peft": "peft", "math_verify": "math-verify", "typer": "typer", "rich": "rich",
        "yaml": "pyyaml", "numpy": "numpy", "matplotlib": "matplotlib", "scipy": "scipy",
        "huggingface_hub": "huggingface-hub", "trl": "trl",
        "deepspeed": "deepspeed"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


CORE = {_name(r): r for r in PROJECT["dependencies"]}
EXTRAS = {extra: {_name(r): r for r in reqs}
          for extra, reqs in PROJECT["optional-dependencies"].items()}


def _imports() -> dict[str, set[str]]:
    """top-level third-party module -> files importing it (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "rewardlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top != "rewardlab" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.name)
    return found


def test_every_import_is_declared():
    declared = set(CORE) | {d for reqs in EXTRAS.values() for d in reqs}
    for mod, files in _imports().items():
        assert mod in DIST, f"{mod} (imported by {sorted(files)}) has no known distribution"
        assert DIST[mod] in declared, f"{DIST[mod]} is imported by {sorted(files)} but not declared"


def test_every_core_dependency_is_used():
    used = {DIST[m] for m in _imports()}
    src = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    if "torch.utils.tensorboard" in src:
        used.add("tensorboard")
    assert set(CORE) - used == set(), f"declared but never imported: {set(CORE) - used}"


def test_optional_packages_are_extras_and_imported_guarded():
    assert "peft" not in CORE and "peft" in EXTRAS["lora"]
    assert "scipy" not in CORE and "scipy" in EXTRAS["stats"]
    lora = (ROOT / "src" / "rewardlab" / "models" / "lora.py").read_text()
    assert re.search(r"try:.*\n\s+(from peft import|import peft\n)", lora), "peft must be imported under try"
    stats = (ROOT / "src" / "rewardlab" / "stats.py").read_text()
    assert re.search(r"try:.*\n\s+from scipy", stats)
    assert "deepspeed" not in CORE and "deepspeed" in EXTRAS["deepspeed"]


def test_torch_is_a_plain_requirement_and_the_makefile_pins_the_cpu_build():
    assert "==" not in CORE["torch"] and CORE["torch"].startswith("torch>=")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install[^\n]*\btorch==2\.13\.0\b", makefile)


def test_license_is_an_spdx_string():
    assert isinstance(PROJECT["license"], str) and PROJECT["license"] == "MIT"
    build = PYPROJECT["build-system"]["requires"]
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in build), "SPDX licence strings need setuptools >= 77"


def test_version_ranges_match_the_code():
    assert re.fullmatch(r"transformers>=5[.\d]*,<6", CORE["transformers"]), CORE["transformers"]
    import transformers
    assert int(transformers.__version__.split(".")[0]) == 5
    assert re.fullmatch(r"peft>=0\.(1[89]|[2-9]\d)[.\d]*", EXTRAS["lora"]["peft"])  # transformers 5
    assert PROJECT["requires-python"] == ">=3.10"
