"""pyproject.toml is the one place for the metadata: its package list, version and console scripts."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import prp

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_under_prp_and_kernels_is_listed():
    """A subpackage missing from [tool.setuptools] packages would be absent from the wheel."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prp").rglob("__init__.py")}
    found.add("prp_kernels")  # the top-level kernels/ folder, mapped by package-dir
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == found
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["prp_kernels"] == "kernels"


def test_top_level_kernels_folder_is_not_a_regular_package():
    """An __init__.py here would make `import kernels` from the repo root find this folder instead of
    Hugging Face's `kernels` distribution (transformers >= 5.25 imports it at start-up)."""
    assert (ROOT / "kernels" / "ipr_kernel.py").is_file()
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_version_matches_the_package():
    assert PYPROJECT["project"]["version"] == prp.__version__


def test_prp_train_console_script_resolves_to_the_shims_entry():
    module, _, attr = PYPROJECT["project"]["scripts"]["prp-train"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert callable(entry)
    import train  # the top-level shim runs the same code

    assert train.main is importlib.import_module(module).main


def test_prp_train_reports_a_user_error_in_one_line(capsys, monkeypatch):
    """The console script's cli(): a bad config is `prog: error: ...` on stderr and exit status 2."""
    from prp.commands.train import cli

    monkeypatch.setattr("sys.argv", ["prp-train", "--config", str(ROOT / "no-such-config.yaml")])
    assert cli() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prp-train: error:"), err
