"""The cheap paths stay cheap: building the entry scripts' parsers and eval.py's missing-files
message load neither torch nor transformers (issue 13/14: seconds before a one-line answer)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")


def _loaded_heavy(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_router_arguments_module_is_light():
    assert _loaded_heavy("import prp.route.flags, prp.route.run, prp.route.serve") == []


def test_eval_missing_files_message_loads_no_model_code():
    code = ("import eval as e\n"
            "try:\n    e.main(['--bench', 'mathvista'])\n"
            "except Exception as exc:\n    assert 'its files are not part of this project' in str(exc), exc\n"
            "else:\n    raise AssertionError('no error')")
    assert _loaded_heavy(code) == []


# --- the top-level kernels/ folder never shadows an installed `kernels` distribution -----------------
# transformers >= 5.25 imports Hugging Face's `kernels` at start-up; the repo root is first on sys.path
# for `python train.py` (and the deepspeed launcher, which runs the same), `python -m pytest` and
# `python -c` from the root. Each entry point runs as Python runs it, then reports what `import kernels`
# found.
ENTRY_POINTS = [
    ("train.py", ["--help"]),
    ("route.py", ["--help"]),
    ("eval.py", ["--bench", "mathvista"]),  # no data: the one-line "what it needs" answer, exit 2
    ("kernels/bench_ipr.py", ["--help"]),
]


def _stub_kernels_distribution(root: Path) -> Path:
    """A `kernels` distribution as pip installs one: a regular package plus its dist-info."""
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "__init__.py").write_text("STUB = 'installed kernels distribution'\n")
    info = root / "kernels-0.19.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    return root


def _run_from_repo_root(code: str, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_kernels_from_the_repo_root_finds_the_installed_distribution(tmp_path):
    site = _stub_kernels_distribution(tmp_path / "site")
    out = _run_from_repo_root("import kernels; print(kernels.STUB)", site)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "installed kernels distribution"


def test_every_entry_point_starts_from_the_repo_root_beside_a_kernels_distribution(tmp_path):
    site = _stub_kernels_distribution(tmp_path / "site")
    for script, args in ENTRY_POINTS:
        # sys.path[0] is the script's folder, exactly as `python SCRIPT ARGS` sets it
        code = (f"import runpy, sys\nsys.path[0] = {str((REPO / script).parent)!r}\n"
                f"sys.argv = [{script!r}, *{args!r}]\nstatus = 0\n"
                f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
                "except SystemExit as exc:\n    status = exc.code\n"
                "import kernels\nprint(status, getattr(kernels, 'STUB', kernels.__file__))")
        out = _run_from_repo_root(code, site)
        assert out.returncode == 0, (script, out.stderr[-2000:])
        status, found = out.stdout.strip().splitlines()[-1].split(" ", 1)
        assert found == "installed kernels distribution", (script, found)
        assert status in {"0", "2"}, (script, status, out.stderr[-2000:])


def test_prp_kernels_resolves_to_the_kernel_source():
    out = subprocess.run([sys.executable, "-c", "import prp_kernels.ipr_kernel as k; print(k.__file__)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == REPO / "kernels" / "ipr_kernel.py"


def test_transformers_imports_hub_kernels_from_the_repo_root():
    """With the real distribution installed (transformers >= 5.25 requires it), its integration imports."""
    import importlib.metadata

    import pytest
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5.25 does not need it)")
    out = subprocess.run([sys.executable, "-c", "import transformers.integrations.hub_kernels"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# --- an entry script started by a Python without the project's dependencies -----------------------
def test_entry_scripts_without_the_dependencies_say_so_in_one_line():
    """`python route.py` with the system Python: one line naming the fix, exit 2 (was a traceback)."""
    for script, args in (("route.py", ["--tau", "2", "--pt", "0.6"]), ("train.py", ["--mode", "jrl"]),
                         ("eval.py", ["--bench", "mathvista", "--data-dir", "nowhere"])):
        code = ("import runpy, sys\nsys.modules['PIL'] = None  # as if Pillow were not installed\n"
                f"sys.path[0] = {str(REPO)!r}\nsys.argv = [{script!r}, *{args!r}]\n"
                f"runpy.run_path({script!r}, run_name='__main__')")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (script, out.stderr[-2000:])
        err = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith(f"{script}: error: this Python"), (script, err)
        assert "'PIL'" in err[0] and "make install" in err[0] and "Traceback" not in out.stderr


def test_a_missing_module_of_the_package_itself_is_a_bug_not_a_setup_problem():
    import pytest

    from prp.core.cli import not_installed
    with pytest.raises(ModuleNotFoundError):
        not_installed("route.py", ModuleNotFoundError("No module named 'prp.nope'", name="prp.nope"))
    assert not_installed("route.py", ModuleNotFoundError("No module named 'PIL'", name="PIL")) == 2
