"""Atomic, resumable checkpoints.

    <output_dir>/ckpt-<step>/
        config.json, model.safetensors, generation_config.json   (save_pretrained: loads with from_pretrained)
          or, training a LoRA adapter: adapter_config.json, adapter_model.safetensors (prp.train.lora)
        tokenizer + processor files
        training_state.pt    optimizer, scheduler (plain torch runs)
        ds/                  DeepSpeed engine checkpoint (ZeRO-3 runs: partitioned optimizer state)
        trainer_state.json   step, micro-step, epoch, this epoch's sampler order, RNG states
        manifest.json        sha256 and size of every other file (written last, before the rename)

Everything is written into `ckpt-<step>.tmp`, the manifest added, every file fsynced, then the folder is renamed
(atomic on POSIX) and the parent fsynced: a `ckpt-N` folder always holds a complete checkpoint,
and a run killed while saving leaves only a `.tmp` that is ignored and later removed.

Resuming (`find_resume_point`, then `restore`):
- the newest checkpoint whose files are intact is used; a damaged one is skipped with a warning
  naming it and the reason: a file whose bytes no longer match manifest.json (a disk fault, a copy
  cut short, zeros written into the weights), a special file (FIFO, device: refused without opening
  it), a trainer_state.json whose values are not what this trainer writes (a step that is not the
  folder's, Infinity, a negative or float count), an optimizer or RNG state of the wrong shape;
  a checkpoint without manifest.json (written before checksums) is checked by its headers alone;
- a checkpoint without its training state (optimizer / DeepSpeed state, scheduler, RNG) is an
  error, unless weights-only was asked for (`resume_weights_only`): then its weights, step and
  learning-rate schedule position are kept and the optimizer starts fresh;
- nothing is unpickled beyond tensors, containers and plain values (`torch.load(weights_only=True)`);
  DeepSpeed's own files also need the few DeepSpeed classes in `DEEPSPEED_SAFE_GLOBALS`.  Every
  `.pt` file's pickle is scanned before anything is loaded; one that names any other global is
  refused with an error (never skipped: that is tampering, not damage).

Saving on a full disk (ENOSPC) stops the run with one line (`DiskFullError`) that says so and names
the last good checkpoint; the partial `.tmp` folder is removed.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import random
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prp.core.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from prp.core.jsonl import read_json_file
from prp.train.integrity import (  # re-exported: the trainer and the tests import them from here
    CKPT_RE,
    MANIFEST,
    CheckpointError,
    DamagedCheckpoint,
    DiskFullError,
    check_rng,
    check_training_state,
    disk_full_error,
    is_disk_full,
    read_trainer_state,
    refuse_special_files,
    verify_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)


# What a ZeRO checkpoint of deepspeed 0.19 pickles besides tensors, containers and plain values
# (torch.serialization.get_unsafe_globals_in_checkpoint on its *_optim_states.pt): the loss scaler
# (a float and a few numbers, no custom __setstate__) and the ZeRO stage enum.  Nothing else loads.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)
WEIGHTS_ONLY_HINT = ("resume with --resume-weights-only (config `resume_weights_only: true`) to keep its weights, "
                     "step and schedule with a fresh optimizer")


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
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
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
    """Add the manifest, fsync, rename `ckpt-N.tmp` -> `ckpt-N`, fsync the parent, then drop all but
    the last `keep_last`."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    write_manifest(tmp)
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
    trainer_state = read_json_file(ckpt / "trainer_state.json", strict_numbers=True)
    training = ckpt / "training_state.pt"
    # weights_only: tensors, numbers and containers only, no arbitrary pickled objects
    training_state = safe_torch_load(training) if training.exists() else None
    rng = safe_torch_load(ckpt / "rng_state.pt")
    return trainer_state, training_state, rng


# ----------------------------------------------------------------------------- safe loading


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def unsafe_globals(path: str | Path, allow: tuple[str, ...] = ()) -> list[str]:
    """Globals that `path`'s pickle would import, beyond what `weights_only=True` and `allow` accept.

    Read from the pickle's opcodes without running it.  A file that is not a readable torch zip
    archive raises DamagedCheckpoint.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):  # a truncated archive loses its central directory, at the end
        raise DamagedCheckpoint(f"{path}: not a complete torch archive (truncated?)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, pickle.UnpicklingError, ValueError, zipfile.BadZipFile) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({exc})") from exc
    return [n for n in names if n not in allow]


def safe_torch_load(path: str | Path, *, map_location="cpu", allow: tuple[str, ...] = ()):
    """`torch.load(weights_only=True)`, plus the classes named in `allow`; anything else is refused.

    The pickle is scanned first, so a refused file runs no code and a damaged one raises
    DamagedCheckpoint instead of a library error.
    """
    path = Path(path)
    refused = unsafe_globals(path, allow)
    if refused:
        raise CheckpointError(f"refusing to load {path}: it would unpickle {', '.join(refused)}, which is not on the "
                              "allow-list (tensors, containers, plain values, and DeepSpeed's loss scaler and ZeRO "
                              "stage); a checkpoint written by this trainer never does")
    try:
        with torch.serialization.safe_globals([_resolve(n) for n in allow]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # the scan and torch disagree: still refuse
        raise CheckpointError(f"refusing to load {path}: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({exc})") from exc


class SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with a `load` that unpickles only what `safe_torch_load` allows.

    DeepSpeed's TorchCheckpointEngine calls `torch.load(weights_only=False)` on the model and
    optimizer state files; `load_deepspeed_state` swaps this wrapper in for the engine's own
    (every other method is passed through, so saving is unchanged).
    """

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load(self, path, map_location=None):
        return safe_torch_load(path, map_location=map_location, allow=DEEPSPEED_SAFE_GLOBALS)


def load_deepspeed_state(engine, ckpt: Path) -> None:
    """The engine's partitioned model + optimizer state from `ckpt/ds`, through the safe loader.

    The learning-rate scheduler is not taken from here: `restore` loads it from training_state.pt.
    """
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)
    load_path, _ = engine.load_checkpoint(str(ckpt / "ds"), tag="ds", load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if load_path is None:
        raise CheckpointError(f"{ckpt / 'ds'}: DeepSpeed found no checkpoint to load")


# ----------------------------------------------------------------------------- resume


@dataclass
class ResumePoint:
    """What `find_resume_point` chose, read and checked."""

    path: Path  # ckpt-N: load the model from here (from_pretrained, safetensors)
    step: int  # optimizer steps done
    trainer_state: dict  # trainer_state.json
    training_state: dict | None  # {"optimizer", "scheduler"}; None when weights_only
    rng: dict | None  # RNG states; None when weights_only
    deepspeed: bool  # the run resuming is a DeepSpeed one (its optimizer state is under ds/)
    weights_only: bool


def _check_weights(ckpt: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if (ckpt / ADAPTER_CONFIG).is_file():  # a LoRA run's checkpoint: the adapter only
        try:
            json.loads((ckpt / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
            with safe_open(str(ckpt / ADAPTER_WEIGHTS), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DamagedCheckpoint(f"{ckpt}: unreadable adapter ({exc})") from exc
        return
    if not (ckpt / "config.json").is_file():
        raise DamagedCheckpoint(f"{ckpt}: no config.json")
    shards = sorted(ckpt.glob("*.safetensors"))
    index = ckpt / "model.safetensors.index.json"
    try:
        if index.is_file():
            wanted = set(read_json_file(index)["weight_map"].values())
            missing = wanted - {p.name for p in shards}
            if missing:
                raise DamagedCheckpoint(f"{ckpt}: weight shards missing: {sorted(missing)}")
        if not shards:
            raise DamagedCheckpoint(f"{ckpt}: no *.safetensors weights")
        for shard in shards:  # the header check covers a truncated file ("not fully covered")
            with safe_open(str(shard), framework="pt"):
                pass
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedCheckpoint(f"{ckpt}: unreadable weights ({exc})") from exc


def _verify_or_warn(ckpt: Path) -> None:
    if not verify_manifest(ckpt):
        log.warning("%s has no %s (written before checksums): only its headers are checked", ckpt, MANIFEST)


def _deepspeed_files(ckpt: Path) -> list[Path]:
    return sorted((ckpt / "ds").rglob("*.pt")) if (ckpt / "ds").is_dir() else []


def open_checkpoint(ckpt: Path, *, deepspeed: bool, weights_only: bool = False) -> ResumePoint:
    """Check `ckpt` and read its small state files.  DamagedCheckpoint if a file is damaged;
    CheckpointError if the training state is missing (and not weights_only) or a pickle is unsafe."""
    ckpt = Path(ckpt)
    refuse_special_files(ckpt)  # before anything is opened
    _check_weights(ckpt)
    trainer_state = read_trainer_state(ckpt)
    step = int(trainer_state["step"])
    if weights_only:
        _verify_or_warn(ckpt)
        return ResumePoint(ckpt, step, trainer_state, None, None, deepspeed, True)

    missing = [name for name in ("rng_state.pt", "training_state.pt") if not (ckpt / name).is_file()]
    ds_files = _deepspeed_files(ckpt)
    if deepspeed and not (any(p.name.endswith("_optim_states.pt") for p in ds_files)
                          and any(p.name.endswith("_model_states.pt") for p in ds_files)):
        missing.append("ds/ (DeepSpeed model and optimizer state)")
    if missing:
        raise CheckpointError(f"{ckpt} has no training state ({', '.join(missing)}): resuming it would restart "
                              f"the optimizer silently; {WEIGHTS_ONLY_HINT}")
    for path in ds_files if deepspeed else []:  # scanned, not loaded: DeepSpeed loads its own files
        refused = unsafe_globals(path, DEEPSPEED_SAFE_GLOBALS)
        if refused:
            raise CheckpointError(f"refusing to resume from {ckpt}: {path} would unpickle {', '.join(refused)}, "
                                  "which is not on the allow-list (DEEPSPEED_SAFE_GLOBALS)")
    training = safe_torch_load(ckpt / "training_state.pt")
    check_training_state(ckpt / "training_state.pt", training)
    rng = safe_torch_load(ckpt / "rng_state.pt")
    check_rng(ckpt / "rng_state.pt", rng)
    if not deepspeed and training.get("optimizer") is None:
        raise CheckpointError(f"{ckpt} holds no torch optimizer state (a DeepSpeed run saved it: resume it with "
                              f"deepspeed); {WEIGHTS_ONLY_HINT}")
    _verify_or_warn(ckpt)  # last: a planted pickle is refused above as tampering, not skipped as damage
    return ResumePoint(ckpt, step, trainer_state, training, rng, deepspeed, False)


def find_resume_point(output_dir: str | Path, *, deepspeed: bool, weights_only: bool = False) -> ResumePoint | None:
    """The newest intact checkpoint of `output_dir`, checked; None when there is no checkpoint at all.

    A damaged checkpoint is skipped with a warning (its reason logged) and the previous one is
    tried; if none is intact, CheckpointError.  A missing training state or an unsafe pickle is
    an error at once (falling back past it would silently lose training or hide tampering).
    """
    ckpts = list_checkpoints(output_dir)
    for ckpt in reversed(ckpts):
        try:
            point = open_checkpoint(ckpt, deepspeed=deepspeed, weights_only=weights_only)
        except DamagedCheckpoint as exc:
            log.warning("checkpoint %s is damaged, falling back to the previous one: %s", ckpt.name, exc)
            continue
        if ckpt != ckpts[-1]:
            log.warning("resuming from %s instead of the newest checkpoint %s (damaged)", ckpt.name, ckpts[-1].name)
        return point
    if ckpts:
        raise CheckpointError(f"--resume: none of the {len(ckpts)} checkpoints in {output_dir} is intact "
                              "(see the warnings above)")
    return None


def restore(point: ResumePoint, *, optimizer, scheduler, engine=None) -> int:
    """Put a ResumePoint's state into the optimizer / scheduler / DeepSpeed engine and the RNGs.

    Returns the step to continue from.  Weights-only: fresh optimizer (the engine's weights came
    from `point.path` through from_pretrained), the schedule moved on to the checkpoint's step.
    """
    if point.weights_only:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.last_epoch = point.step - 1
            scheduler.step()  # sets the learning rate of step `point.step`
        log.info("resumed weights only from %s at step %d: fresh optimizer", point.path, point.step)
        return point.step
    if engine is not None:
        load_deepspeed_state(engine, point.path)
    else:
        optimizer.load_state_dict(point.training_state["optimizer"])
    if point.training_state.get("scheduler") is not None:
        scheduler.load_state_dict(point.training_state["scheduler"])
    set_rng_state(point.rng)
    return point.step


__all__ = [
    "DEEPSPEED_SAFE_GLOBALS", "MANIFEST", "CheckpointError", "DamagedCheckpoint", "DiskFullError", "ResumePoint",
    "SafeCheckpointEngine", "commit", "disk_full_error", "find_resume_point", "is_disk_full", "latest_checkpoint",
    "list_checkpoints", "load_deepspeed_state", "open_checkpoint", "read_state", "remove_stale_tmp", "restore",
    "rng_state", "safe_torch_load", "set_rng_state", "tmp_dir", "unsafe_globals", "verify_manifest", "write_manifest",
    "write_state",
]
