"""The layout's import arrows (docs/architecture.md): core <- route <- {train, eval}; nothing imports toy."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PRP = Path(__file__).resolve().parent.parent / "prp"
# wing -> the wings it must not import (itself and core are always allowed)
FORBIDDEN = {
    "core": {"route", "train", "eval", "toy"},
    "route": {"train", "eval", "toy"},
    "train": {"eval", "toy"},
    "eval": {"train", "toy"},
}
MAX_LINES = 450  # "no module over ~400 lines"


def _imported_wings(path: Path) -> set[str]:
    wings = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "prp" and len(parts) > 1:
                wings.add(parts[1])
    return wings


MODULES = sorted(p for p in PRP.rglob("*.py") if p.relative_to(PRP).parts[0] in FORBIDDEN)


def test_the_wings_exist():
    assert {p.relative_to(PRP).parts[0] for p in MODULES} == set(FORBIDDEN)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PRP)))
def test_imports_point_inward(path: Path):
    wing = path.relative_to(PRP).parts[0]
    bad = _imported_wings(path) & FORBIDDEN[wing]
    assert not bad, f"prp/{path.relative_to(PRP)} ({wing}) imports prp.{sorted(bad)}"


@pytest.mark.parametrize("path", sorted(PRP.rglob("*.py")), ids=lambda p: str(p.relative_to(PRP)))
def test_modules_stay_short(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"prp/{path.relative_to(PRP)} has {n} lines (split it along a seam)"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path):
    bad = tmp_path / "m.py"
    bad.write_text("from prp.toy.tiny import build_tiny_model\nimport prp.eval.metrics\n")
    assert _imported_wings(bad) == {"toy", "eval"}


def test_the_answer_tag_regex_has_one_home():
    """One `<answer>` regex (prp.core.answers.ANSWER_TAG): training's parser and evaluation's
    extraction must not drift apart by each keeping a copy."""
    homes = [str(p.relative_to(PRP)) for p in sorted(PRP.rglob("*.py"))
             if 're.compile(r"<answer>' in p.read_text()]
    assert homes == ["core/answers.py"]


def test_every_function_docs_architecture_names_exists():
    """Each `path` `name` pair in docs/architecture.md's step tables is defined in that file."""
    import re

    doc = (PRP.parent / "docs" / "architecture.md").read_text()
    pairs = [(path, name) for path, names in re.findall(r"`((?:prp|kernels)/[\w/]+\.py)`((?:[ ,/→or]*`[\w.]+`)+)", doc)
             for name in re.findall(r"`([\w.]+)`", names)]
    assert len(pairs) > 30
    missing = []
    for path, name in pairs:
        src = (PRP.parent / path).read_text()
        last = name.split(".")[-1]
        if not re.search(rf"^\s*(?:def|class)\s+{last}\b|^\s*{last}\s*[:=]", src, re.M):
            missing.append(f"{path} {name}")
    assert not missing
