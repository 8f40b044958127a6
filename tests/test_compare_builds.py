"""scripts/compare_builds.py: two demo builds agree bit for bit, wall-clock fields aside."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_builds  # noqa: E402


def _build(work: Path, *, steps: int = 3, loss_at_2: float = 0.5, weight: float = 1.0, step_time: float = 1.0):
    stage = work / "drl"
    (stage / "ckpt-3").mkdir(parents=True)
    rows = [{"step": s, "loss": loss_at_2 if s == 2 else 0.1 * s, "step_time_s": step_time * s}
            for s in range(1, steps + 1)]
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_file({"w": torch.full((2, 2), weight), "b": torch.zeros(2)}, str(stage / "ckpt-3" / "model.safetensors"))
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text('{"id": "train-00000"}\n')


def test_identical_builds_pass_and_wall_clock_is_ignored(tmp_path, capsys):
    _build(tmp_path / "a")
    _build(tmp_path / "b", step_time=7.0)  # another machine load: only the timings differ
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "drl/metrics.jsonl (3 common steps)" in out and "3 compared, 0 differ" in out


def test_a_changed_loss_or_weight_is_reported(tmp_path, capsys):
    _build(tmp_path / "a")
    _build(tmp_path / "b", loss_at_2=0.5000001, weight=1.0 + 2 ** -20)
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS    drl/metrics.jsonl (3 common steps): step 2 differs in loss" in out
    assert "DIFFERS    drl/ckpt-3/model.safetensors: 1 of 2 tensors differ (first: w)" in out


def test_a_build_stopped_early_is_compared_over_its_steps(tmp_path, capsys):
    _build(tmp_path / "a")
    _build(tmp_path / "b", steps=2)
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "(2 common steps)" in capsys.readouterr().out


def test_reproduce_demo_reports_the_comparison_as_item_7(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reproduce_demo as R

    _build(tmp_path / "a")
    _build(tmp_path / "b", steps=2)
    _build(tmp_path / "c", weight=2.0)
    res = {"accuracy_by_level": {"target": {"mean": 0.7}}, "n": 400}

    def row() -> dict:
        return next(c for c in R.claims(res) if "deterministic" in c["claim"])

    assert row()["measured"] == "not checked (no --second-build)" and not row()["reproduced"]
    res["determinism"] = R.determinism(tmp_path / "a", tmp_path / "b")
    assert row()["reproduced"] and row()["measured"].startswith("3 of 3 compared identical")
    res["determinism"] = R.determinism(tmp_path / "a", tmp_path / "c")
    assert not row()["reproduced"] and row()["measured"].endswith("differ: drl/ckpt-3/model.safetensors")


def test_a_half_written_last_line_ends_the_steps_a_bad_line_elsewhere_is_an_error(tmp_path, capsys):
    _build(tmp_path / "a")
    _build(tmp_path / "b")
    metrics = tmp_path / "b" / "drl" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed while writing step 3
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "(2 common steps)" in capsys.readouterr().out
    metrics.write_text(lines[0] + "\n{not json\n" + lines[2] + "\n")
    with pytest.raises(SystemExit, match=r"metrics.jsonl:2: not a JSON line"):
        compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")])


def test_second_build_must_be_a_folder(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reproduce_demo as R

    _build(tmp_path / "a")
    with pytest.raises(SystemExit, match="not a folder"):
        R.determinism(tmp_path / "a", tmp_path / "missing")


def test_ignored_columns_are_left_out_and_said(tmp_path, capsys):
    """Two builds whose code logs a column differently: --ignore-columns compares the rest, and says so."""
    _build(tmp_path / "a")
    _build(tmp_path / "b")
    path = tmp_path / "b" / "drl" / "metrics.jsonl"
    rows = [{**json.loads(line), "rating_d_std": 0.5} for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "step 1 differs in rating_d_std" in capsys.readouterr().out
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "b"), "--ignore-columns", "rating_"]) == 0
    assert "metrics columns left out: rating_*" in capsys.readouterr().out
    # a prefix leaves out only its own columns: a changed loss is still caught
    _build(tmp_path / "c", loss_at_2=0.6)
    assert compare_builds.main([str(tmp_path / "a"), str(tmp_path / "c"), "--ignore-columns", "rating_"]) == 1
