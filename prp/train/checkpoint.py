"""Atomic, resumable checkpoints.

    <output_dir>/ckpt-<step>/
        config.json, model.safetensors, generation_config.json   (save_pretrained: loads with from_pretrained)
        tokenizer + processor files
        training_state.pt    optimizer, scheduler (plain torch runs)
        ds/                  DeepSpeed engine checkpoint (ZeRO-3 runs: partitioned optimizer state)
        trainer_state.json   step, micro-step, epoch, this epoch's sampler order, RNG states

Everything is written into `ckpt-<step>.tmp`, every file fsynced, then the folder is renamed
(atomic on POSIX) and the parent fsynced: a `ckpt-N` folder always holds a complete checkpoint,
and a run killed while saving leaves only a `.tmp` that is ignored and later removed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

_CKPT_RE = re.compile(r"^ckpt-(\d+)$")


def rng_state() -> dict:
    """Every RNG's state in types that `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (`.tmp` folders never match)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def remove_stale_tmp(output_dir: str | Path) -> None:
    root = Path(output_dir)
    if root.is_dir():
        for p in root.glob("ckpt-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def tmp_dir(output_dir: str | Path, step: int) -> Path:
    path = Path(output_dir) / f"ckpt-{step}.tmp"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_state(tmp: Path, *, trainer_state: dict, optimizer=None, scheduler=None) -> None:
    """The non-model part (rank 0): optimizer/scheduler (plain torch) and the trainer's position + RNG."""
    # The scheduler is saved under DeepSpeed too (its engine checkpoint is loaded without it).
    if optimizer is not None or scheduler is not None:
        torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   tmp / "training_state.pt")
    torch.save(rng_state(), tmp / "rng_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state) + "\n")


def commit(tmp: Path, *, keep_last: int) -> Path:
    """fsync, rename `ckpt-N.tmp` -> `ckpt-N`, fsync the parent, then drop all but the last `keep_last`."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if keep_last > 0:
        for old in list_checkpoints(final.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(ckpt: Path) -> tuple[dict, dict | None, dict]:
    """(trainer_state, training_state or None, rng_state)."""
    trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
    training = ckpt / "training_state.pt"
    # weights_only: tensors, numbers and containers only, no arbitrary pickled objects
    training_state = torch.load(training, weights_only=True) if training.exists() else None
    rng = torch.load(ckpt / "rng_state.pt", weights_only=True)
    return trainer_state, training_state, rng
