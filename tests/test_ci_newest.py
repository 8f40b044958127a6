"""CI's newest tier (scripts/ci_newest.py): what differs from the lock, and naming the package that broke."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ci_newest", REPO / "scripts" / "ci_newest.py")
ci_newest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ci_newest)


def test_read_lock_keeps_the_lines_whose_markers_hold(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\nNumPy==1.0 ; python_full_version < '3.0'\nnumpy==2.4.6 ; python_full_version >= '3.0'\n"
                    "    # via torch\nTyping_Extensions==4.1\ntorch==2.13.0\n")
    assert ci_newest.read_lock(lock, sys.executable) == {"numpy": "2.4.6", "typing-extensions": "4.1",
                                                         "torch": "2.13.0"}


def test_drift_lists_changed_and_added_packages_but_not_the_cpu_build_of_the_pinned_torch():
    lock = {"transformers": "5.25.0", "numpy": "2.4.6", "torch": "2.13.0"}
    now = {"transformers": "5.26.0", "numpy": "2.4.6", "torch": "2.13.0+cpu", "newdep": "1.0", "prp": "0.1.0",
           "pip": "26.3"}
    assert ci_newest.drift(lock, now) == [("newdep", "-", "1.0"), ("transformers", "5.25.0", "5.26.0")]


def test_direct_dependencies_come_from_pyproject():
    direct = ci_newest.direct_dependencies()
    assert {"torch", "transformers", "math-verify", "pydantic", "deepspeed", "triton", "pytest"} <= set(direct)
    assert all(name == ci_newest.canonical(name) for name in direct)


@pytest.mark.parametrize("culprit", ["transformers", "tokenizers"])
def test_find_break_names_the_package_whose_locked_version_makes_the_tests_pass(monkeypatch, culprit):
    suspects = [("transformers", "5.25.0", "5.26.0"), ("tokenizers", "0.23.0", "0.24.0")]
    locked = {name: old for name, old, _ in suspects}
    installed = {name: new for name, _, new in suspects}

    def fake_run(cmd, **_):  # pip install NAME==VERSION, or the failing tests: pass iff the culprit is locked
        if cmd[1:4] == ["-m", "pip", "install"]:
            name, _, version = cmd[-1].partition("==")
            installed[name] = version
            return 0
        return 0 if installed[culprit] == locked[culprit] else 1

    monkeypatch.setattr(ci_newest, "run", fake_run)
    verdict = ci_newest.find_break("py", suspects, ["tests/test_route.py::test_x"])
    new = dict((n, v) for n, _, v in suspects)[culprit]
    assert verdict == f"{culprit} {new} breaks the tests above; the lock's {culprit} {locked[culprit]} passes them"
    assert installed == {name: new for name, _, new in suspects}  # each put back to today's release


def test_find_break_says_none_when_no_single_package_explains_it(monkeypatch):
    monkeypatch.setattr(ci_newest, "run", lambda cmd, **_: 0 if cmd[1:4] == ["-m", "pip", "install"] else 1)
    assert ci_newest.find_break("py", [("numpy", "2.4.6", "2.5.0"), ("added", "-", "1.0")], ["t::x"]) is None
