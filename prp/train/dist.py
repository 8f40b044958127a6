"""Distributed set-up: one process (plain torch) or many under the `deepspeed` launcher (ZeRO-3).

Each rank takes distinct prompts and generates all N completions of them itself, so a group never
spans ranks; group tensors are still all-gathered ([G_world, N]) so the advantage computation, the
DSS draws (one generator seeded by the step) and the logged metrics are global and identical on
every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from prp.core.jsonl import JsonError, read_json_file
from prp.train.config import ConfigError, TrainConfig

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ds_zero3.json"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    deepspeed: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # NCCL gathers CUDA tensors only

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's [G, ...] tensor along dim 0 (rank order) -> [G*world, ...]."""
        if self.world == 1:
            return t
        local = t.contiguous().to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(t.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (so all ranks stop together)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


# Warnings DeepSpeed's own calls raise on every ZeRO-3 gather and gradient reduce-scatter (torch 2.13
# deprecates the collectives DeepSpeed uses): dozens per run, interleaved with the progress bar.  This
# project never calls them (prp.train.dist gathers with all_gather), so the user cannot act on them.
DEEPSPEED_NOISE = (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",)


def quiet_deepspeed_warnings() -> None:
    """Ignore DEEPSPEED_NOISE (FutureWarnings only, matched by message); every other warning still shows."""
    import warnings

    for message in DEEPSPEED_NOISE:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def setup_dist(use_deepspeed: bool) -> Dist:
    if not use_deepspeed:
        return Dist()
    import deepspeed

    quiet_deepspeed_warnings()

    deepspeed.init_distributed()  # picks gloo on CPU, nccl on CUDA
    device = torch.device(deepspeed.get_accelerator().current_device_name())
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), deepspeed=True, device=device)


def local_device() -> torch.device:
    """This process's compute device: its GPU (LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def ds_config_for(cfg: TrainConfig, world: int) -> dict:
    """The DeepSpeed JSON with the batch/accumulation/precision fields filled from the TrainConfig."""
    path = Path(cfg.deepspeed_config) if cfg.deepspeed_config else DEFAULT_DS_CONFIG
    if not path.is_file():
        raise ConfigError(f"deepspeed_config {path} does not exist; pass --deepspeed-config FILE "
                                f"(default {DEFAULT_DS_CONFIG})")
    try:
        ds = read_json_file(path)
    except JsonError as exc:  # not JSON, not UTF-8, too deep, an overlong number: one line (prp.core.jsonl)
        raise ConfigError(f"deepspeed_config {path}: {exc}; fix the file (see {DEFAULT_DS_CONFIG})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed_config {path}: expected a JSON object (see {DEFAULT_DS_CONFIG})")
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds["bf16"] = {"enabled": bool(cfg.bf16)}
    ds.pop("optimizer", None)  # a torch optimizer is passed in (DeepSpeed's would JIT-build cpu_adam)
    ds.pop("scheduler", None)
    return ds


__all__ = ["Dist", "ds_config_for", "local_device", "quiet_deepspeed_warnings", "setup_dist"]
