"""The shipped demo (demo/, built by scripts/build_demo.py) still works: a change that breaks the
trained checkpoints, their chat templates, the prompts, prefix generation, parsing or the rank
correlation fails here.

On 200 test items, greedy, one thread (~15 s on a 2-core CPU):
- the target still reads and adds: exact accuracy at k=1 (one number) >= 90% (shipped: 100%);
- the DRL draft closes its rating prefix by itself (free generation) on >= 95% of items, its mean
  rating matches its accuracy within 0.1, and its ratings rank its correct answers first (Tab. 1):
  Spearman of rank & correctness <= -0.5 (shipped: -0.86; P1 on the same answers: -0.67).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prp.eval.metrics import rating_rank_correlation
from prp.toy.demo import DEFAULT_DEMO, ensure_default_demo

DEMO = Path(__file__).resolve().parent.parent / "demo"
N_ITEMS = 200

pytestmark = pytest.mark.skipif(not (DEMO / "models" / "drl" / "config.json").exists(),
                                reason="demo checkpoints not built (python scripts/build_demo.py --out demo)")


def test_default_demo_points_at_the_shipped_models():
    paths = ensure_default_demo(DEFAULT_DEMO)
    for key in ("draft", "target"):
        assert (paths[key] / "config.json").exists()
        assert (paths[key] / "model.safetensors").exists()
    assert paths["data"].exists() and paths["validation"].exists()


def test_shipped_checkpoints_are_small():
    total = sum(f.stat().st_size for f in (DEMO / "models").rglob("*") if f.is_file())
    assert total < 25e6, f"demo/models is {total / 1e6:.1f} MB"


def _records(n: int = N_ITEMS):
    from prp.core.data import load_jsonl

    return load_jsonl(DEMO / "data" / "test.jsonl", check_images=False).records[:n]


def _queries(records):
    from prp.route.router import Query

    return [Query(id=r.id, question=r.question, image=r.load_image(), gold=r.answer) for r in records]


@torch.no_grad()
def test_target_reads_single_numbers():
    from prp.core.modeling import load_model
    from prp.route.router import LocalTarget, extract_answer
    from prp.train.rewards import accuracy_reward

    torch.set_num_threads(1)
    model, proc = load_model(str(DEMO / "models" / "target"), device="cpu")
    target = LocalTarget(model, proc, max_new_tokens=40)
    records = [r for r in _records() if r.meta.get("level") == 1]
    answers = target.answer(_queries(records))
    acc = np.mean([accuracy_reward(extract_answer(a.text), r.answer) or 0.0
                   for a, r in zip(answers, records, strict=True)])
    assert acc >= 0.9, f"target accuracy at k=1 is {acc:.0%} (shipped: 100%): the demo target broke"


@torch.no_grad()
def test_drl_draft_rates_its_own_accuracy():
    from prp.core.modeling import load_model
    from prp.route.router import Router, RouterConfig, extract_answer
    from prp.train.rewards import accuracy_reward

    torch.set_num_threads(1)
    model, proc = load_model(str(DEMO / "models" / "drl"), device="cpu")
    router = Router(model, proc, None, RouterConfig(mode="drl", rating="free", ipr="off", max_new_tokens=40))
    records = _records()
    d, correct, closed = [], [], []
    for i in range(0, len(records), 50):
        chunk = records[i:i + 50]
        prefix = router.pregenerate(_queries(chunk))
        ratings = router.evaluate(prefix)
        new, _ = router.continue_draft(prefix, list(range(len(chunk))))
        for j, (rec, rt) in enumerate(zip(chunk, ratings, strict=True)):
            answer = extract_answer(proc.tokenizer.decode(new[j], skip_special_tokens=True))
            correct.append(float(accuracy_reward(answer, rec.answer) or 0.0))
            d.append(np.nan if rt.d is None else rt.d)
            closed.append(prefix.stop[j] == "closed")
    d, correct = np.array(d), np.array(correct)
    assert np.mean(closed) >= 0.95, f"only {np.mean(closed):.0%} of rating prefixes closed"
    assert np.all((d[~np.isnan(d)] >= 0) & (d[~np.isnan(d)] <= 1))
    gap = abs(np.nanmean(d) - correct.mean())
    assert gap < 0.1, f"mean rating {np.nanmean(d):.2f} vs accuracy {correct.mean():.2f}: DRL calibration lost"
    rho = rating_rank_correlation(d, correct)
    assert rho <= -0.5, f"Spearman of rank & correctness {rho:+.2f} (shipped -0.86): DRL ratings no longer rank"
