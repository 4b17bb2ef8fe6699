"""docs/python_api.md runs as written: every ```python block, in order, in one namespace, in an
empty folder. The README links to it for the Python API."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_doc_has_examples():
    assert len(_blocks()) >= 3


def test_python_api_doc_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__python_api_doc__"}
    for i, code in enumerate(_blocks()):
        try:
            exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), ns)
        except Exception as e:  # name the block that failed
            pytest.fail(f"{DOC.name} block {i + 1} failed: {type(e).__name__}: {e}")
    out = capsys.readouterr().out
    assert "[0.0, -0.2, 0.0]\n[0.3, -0.35, 0.95]\n[0.2, -0.2, 0.0]\n" in out
    assert (tmp_path / "runs" / "prm" / "final").is_dir()


def test_every_export_resolves_and_is_documented():
    import rewardlab
    text = DOC.read_text(encoding="utf-8")
    for name in rewardlab.__all__:
        assert getattr(rewardlab, name) is not None, name
        if name != "__version__":
            assert f"`{name}`" in text, f"{name} is exported but not listed in {DOC.name}"
    assert "clip_delta" in rewardlab.REFINERS and "trl-stepwise" in rewardlab.FORMATS
