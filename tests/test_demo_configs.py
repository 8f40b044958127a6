"""The demo's build stages are YAML files (configs/demo/), one per stage of scripts/build_demo.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_demo  # noqa: E402

# stage -> the training mode its name promises (docstring of scripts/build_demo.py)
MODES = {"draft-sft": "sft", "draft-sft-random": "sft", "draft-grpo": "grpo", "drl": "drl", "drl-ablation": "drl",
         "sft-cn": "sft-cn", "target-sft": "sft",
         "presample": "presample", "jrl": "jrl"}


def test_one_yaml_per_stage():
    files = {p.stem for p in (ROOT / "configs" / "demo").glob("*.yaml")} - {"base"}
    assert files == set(build_demo.STAGES) == set(MODES)


@pytest.mark.parametrize("stage", sorted(MODES))
def test_each_stage_resolves_to_its_mode(stage):
    cfg = build_demo.stage_config(stage, [])
    assert cfg.mode == MODES[stage] and cfg.per_device_batch_size == 32  # base.yaml's batch reaches every stage


def test_a_shorter_stage_keeps_its_warmup_steps():
    # drl.yaml: warmup_ratio 0.0667 of max_steps 300 = 20 steps; at max_steps 100 that is 20 / 100 = 0.2
    assert build_demo.stage_sets("drl", {"drl": {"max_steps": "100"}}) == [
        "--set", "max_steps=100", "--set", "warmup_ratio=0.2000"]
