"""Shared fixtures for the router tests: a tiny draft/target pair and a small query file."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from prp.toy.synthetic import build_benchmark
from prp.toy.tiny import save_tiny_pair

# Random-init tiny models at the default init scale emit one token forever (greedy), which
# would make "continuation == uninterrupted generation" trivially true.  Perturbing the
# weights gives varied, prompt-dependent outputs (and digit choices) without any training.
PERTURB_STD = 0.15


class Interrupt(BaseException):  # like a kill: not an item's failure, so never isolated as one
    pass


class InterruptingPolicy:
    """Decides like BatchFraction(0.5), but the n-th batch is interrupted (like a killed process)."""

    def __init__(self, at_batch: int):
        self.calls, self.at_batch = 0, at_batch

    def keep(self, scores):
        from prp.route.decide import BatchFraction

        self.calls += 1
        if self.calls == self.at_batch:
            raise Interrupt
        return BatchFraction(0.5).keep(scores)


def build_pair(root: Path) -> dict[str, Path]:
    """root/test (the draft, perturbed) and root/target (same tiny size, another seed)."""
    from transformers import AutoModelForImageTextToText

    draft = save_tiny_pair(root / "d", seed=0, sizes=("test",))["test"]
    target = save_tiny_pair(root / "t", seed=1, sizes=("test",))["test"]
    model = AutoModelForImageTextToText.from_pretrained(draft)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g) * PERTURB_STD)
    model.save_pretrained(draft)
    return {"draft": draft, "target": target}


def build_queries(root: Path, n: int, *, seed: int = 0) -> Path:
    """n synthetic sum queries (JSONL + PNGs) under root; returns the JSONL path."""
    return build_benchmark(root, seed=seed, sizes={"test": n})["test"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
