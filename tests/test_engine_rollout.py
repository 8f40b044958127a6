"""Training rollouts through the decode engine (`rollout_engine: engine`) and nucleus sampling."""
from __future__ import annotations

import pytest
import torch

from prp.core.batches import build_prompts
from prp.core.modeling import load_model
from prp.core.prompts import build_messages
from prp.route.decode import choose
from prp.toy.synthetic import render
from prp.train.config import TrainConfig
from prp.train.rollout import generate_rollout, inference_copy


@pytest.fixture(scope="module")
def draft(pair):
    return load_model(pair["draft"])


def _prompts(proc, repeat=2):
    msgs = [build_messages("What is the sum of the numbers in the image?", mode="drl"),
            build_messages("How many?", mode="drl")]
    return build_prompts(proc, msgs, [render([3, 14]), render([5])], repeat=repeat)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """probs .5 .3 .15 .05, top_p .7: mass above token 2 is .8 >= .7, so only tokens 0 and 1 stay,
    renormalised to .5/.8 = .625 and .3/.8 = .375."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    picks = choose(logits, temperature=1.0, top_p=0.7, generator=g)
    counts = torch.bincount(picks, minlength=4).tolist()
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 0.625) < 0.03
    # top_p 1: every token can come up
    assert (torch.bincount(choose(logits, temperature=1.0, generator=g), minlength=4) > 0).all()


def test_engine_rollout_near_greedy_equals_hf_greedy(draft):
    """At a vanishing temperature sampling is the argmax, so both engines must give HF's greedy
    completions (vision placeholders suppressed in both)."""
    model, proc = draft
    prompts = _prompts(proc)
    kw = {"max_new_tokens": 12, "temperature": 1e-6, "top_p": 1.0, "seed": 3}
    hf = generate_rollout(model, proc, prompts, engine="hf", **kw)
    mine = generate_rollout(model, proc, prompts, engine="engine", **kw)
    assert mine.completions == hf.completions and mine.truncated == hf.truncated
    assert len(set(mine.completions[0])) > 3
    # sampled: a function of the seed only
    a = generate_rollout(model, proc, prompts, engine="engine", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5)
    b = generate_rollout(model, proc, prompts, engine="engine", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5)
    assert a.completions == b.completions


def test_inference_copy_follows_the_policy_weights(draft):
    """The engine's copy is refreshed from the policy at each rollout (after each optimizer step)."""
    model, _ = draft
    twin = inference_copy(model)
    assert twin is not model and not any(p.requires_grad for p in twin.parameters())
    w = model.lm_head.weight
    with torch.no_grad():
        w.add_(1.0)
    try:
        assert inference_copy(model) is twin and torch.equal(twin.lm_head.weight, w)
    finally:
        with torch.no_grad():
            w.sub_(1.0)
    inference_copy(model)
    assert torch.equal(twin.lm_head.weight, model.lm_head.weight)


def test_inference_copy_is_refreshed_once_per_weights_version(draft):
    """Micro-steps of one optimizer step share the weights: the same version is not copied again."""
    model, _ = draft
    twin = inference_copy(model, version=3)
    w = model.lm_head.weight
    with torch.no_grad():
        w.add_(1.0)
    try:
        assert not torch.equal(inference_copy(model, version=3).lm_head.weight, w)  # same step: no copy
        assert torch.equal(inference_copy(model, version=4).lm_head.weight, w)  # next step: copied
    finally:
        with torch.no_grad():
            w.sub_(1.0)
    inference_copy(model)
    assert torch.equal(twin.lm_head.weight, model.lm_head.weight)


def test_rollout_engine_config_field():
    assert TrainConfig.rollout_engine == "hf"
    with pytest.raises(ValueError, match="hf or engine"):
        generate_rollout(None, None, None, max_new_tokens=1, temperature=1.0, top_p=1.0, seed=0, engine="vllm")


ZERO3_SCRIPT = r"""
import os, sys, torch
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
import deepspeed
from transformers import AutoModelForImageTextToText
from transformers.integrations import HfDeepSpeedConfig
from prp.toy.tiny import save_tiny_model
from prp.train.rollout import inference_copy

path = save_tiny_model(sys.argv[1], size="test")
ref = AutoModelForImageTextToText.from_pretrained(path)  # before the ZeRO-3 config: full weights
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
keep = HfDeepSpeedConfig(ds)
deepspeed.init_distributed(dist_backend="gloo")
model = AutoModelForImageTextToText.from_pretrained(path)
engine, *_ = deepspeed.initialize(model=model, config=ds, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
assert engine.module.lm_head.weight.numel() == 0  # partitioned
twin = inference_copy(engine)
sd, rd = twin.state_dict(), ref.state_dict()
assert sd.keys() == rd.keys() and all(torch.equal(sd[k], rd[k]) for k in rd)
assert engine.module.lm_head.weight.numel() == 0  # the shards are released again
print("ok")
"""


@pytest.mark.slow
def test_inference_copy_gathers_zero3_shards(tmp_path):
    """Under ZeRO-3 (DeepSpeed on CPU/gloo, one rank) the copy holds the full weights while the
    policy stays partitioned."""
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    proc = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, str(tmp_path / "m")], check=False,
                          capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
