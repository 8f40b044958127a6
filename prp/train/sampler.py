"""Training data: load the records (bad rows skipped and counted), and the order each rank reads them in.

The order is a pure function of (seed, epoch, micro-step, rank): a resumed run reads exactly the
prompts an uninterrupted one would, without saving a data-loader state.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from prp.core.data import (
    ImageError,
    LoadResult,
    Record,
    drop_unparsable_gold,
    load_chartqa_train,
    load_jsonl,
    load_mmk12,
)
from prp.train.config import ConfigError, TrainConfig
from prp.train.dist import Dist
from prp.train.rollout import step_seed

log = logging.getLogger("prp.train")

LOADERS = {"mmk12": load_mmk12, "chartqa": load_chartqa_train, "jsonl": load_jsonl}


def resolve_data(cfg: TrainConfig) -> Path:
    """The data file (`synthetic:<n>` specs are generated into files by train.py before training starts)."""
    path = Path(cfg.train_data)
    if not path.exists():
        raise ConfigError(f"train_data {path} does not exist; pass --train-data FILE "
                          "(JSONL with id, image, question, answer; or synthetic:<n>)")
    if not path.is_file() and not path.is_dir():  # a FIFO or a device: reading it could block forever
        raise ConfigError(f"train_data {path} is not a regular file (a FIFO or device); pass --train-data FILE")
    return path


def load_records(cfg: TrainConfig, path: Path) -> LoadResult:
    """Load, then drop what training cannot use (each drop counted by reason)."""
    root = cfg.image_root or None
    loader = LOADERS[cfg.data_format]  # validated in TrainConfig.validate
    kwargs = {"require_answer": True} if cfg.data_format == "jsonl" else {}
    result = drop_unparsable_gold(loader(path, image_root=root, **kwargs))
    if cfg.mode == "sft":  # the warm start trains on reference traces
        kept = []
        for r in result.records:
            trace = r.meta.get(cfg.sft_reasoning)
            if isinstance(trace, str) and trace.strip():
                kept.append(r)
            else:
                result.skipped["no_reasoning"] += 1
        result.records = kept
    if cfg.max_records:
        result.records = result.records[: cfg.max_records]
    return result


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) per epoch, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(step_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


def safe_image(record: Record) -> tuple[Image.Image | None, bool]:
    """(image, ok): a file that broke after loading is replaced by a blank image and its group not trained."""
    try:
        return record.load_image(), True
    except (ImageError, OSError) as exc:
        log.warning("record %s: %s; not trained this step", record.id, exc)
        return Image.new("RGB", (56, 56)), False


class Sampler:
    """Step 2 of Alg. 1 / 2: this rank's prompts for a global micro-step (distinct across ranks)."""

    def __init__(self, records: list[Record], *, prompts_per_rank: int, d: Dist, seed: int):
        self.records, self.ppd, self.d, self.seed = records, prompts_per_rank, d, seed
        self.micro_per_epoch = len(records) // (prompts_per_rank * d.world)
        if self.micro_per_epoch == 0:
            raise ConfigError(f"{len(records)} usable records < one global batch of {prompts_per_rank * d.world} "
                             "prompts; add data or lower per_device_batch_size")
        self._epoch, self._order = -1, []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(len(self.records), seed=self.seed, epoch=epoch)
        return self._order

    def records_for(self, micro: int) -> list[Record]:
        epoch, pos = divmod(micro, self.micro_per_epoch)
        span = self.ppd * self.d.world
        chunk = self.order(epoch)[pos * span:(pos + 1) * span]
        return [self.records[i] for i in chunk[self.d.rank * self.ppd:(self.d.rank + 1) * self.ppd]]


__all__ = ["Sampler", "epoch_order", "load_records", "resolve_data", "safe_image"]
