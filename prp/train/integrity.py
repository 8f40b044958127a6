"""What makes a checkpoint trustworthy on resume, and what stops a save (prp.train.checkpoint uses it).

- manifest.json: the size and sha256 of every file, written inside `ckpt-N.tmp` before the atomic
  rename, checked on resume (`verify_manifest`): zeros written into the weights keep a valid
  safetensors header, so only the checksum sees them;
- special files (FIFO, socket, device) are refused by `stat` before anything is opened;
- trainer_state.json, training_state.pt and rng_state.pt must hold what the trainer writes (a step
  equal to the folder's, integer counts, an optimizer state_dict, RNG states that set);
- a full disk (ENOSPC / EDQUOT, or torch's archive writer failing with no space left) is one line,
  `DiskFullError`, naming the last good checkpoint.

A check that fails raises `DamagedCheckpoint`: `find_resume_point` falls back to the previous one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import torch

from prp.core.cli import UserError
from prp.core.jsonl import JsonError, NotARegularFile, read_json_file

CKPT_RE = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that must not be resumed from as asked (missing state, unsafe pickle, nothing intact)."""


class DamagedCheckpoint(CheckpointError):
    """A file of the checkpoint is truncated or unreadable: `find_resume_point` falls back past it."""


class DiskFullError(UserError):
    """The disk filled up while the run wrote a checkpoint or its log: one line, exit status 2."""


MANIFEST = "manifest.json"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException, where: str | Path) -> bool:
    """Did `exc` come from a full disk?  An OSError with ENOSPC/EDQUOT anywhere in its chain, or a
    write failure of torch's archive writer (a RuntimeError "[enforce fail at inline_container.cc]
    ... file write failed" that carries no errno) while `where`'s file system has under 16 MiB free."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, RuntimeError) and "write" in str(exc).lower():
        try:
            return shutil.disk_usage(where).free < 16 * 2**20
        except OSError:
            return False
    return False


def disk_full_error(exc: BaseException, out: str | Path, doing: str, last: Path | None) -> DiskFullError:
    """The one line for a full disk: what failed, and `last`, the checkpoint to resume from."""
    return DiskFullError(f"the disk is full ({os.strerror(errno.ENOSPC)}) while {doing} in {out}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}; the last good "
                         f"checkpoint is {last or 'none (no checkpoint was completed)'}; free space, then rerun with "
                         "--resume")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(tmp: Path) -> None:
    """manifest.json: {"files": {relative path: {"bytes", "sha256"}}} for every file under `tmp`."""
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (tmp / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")


def refuse_special_files(ckpt: Path) -> None:
    """Every entry of `ckpt` must be a folder or a regular file, checked by stat alone: a FIFO
    named model.safetensors would block the reader forever, a device would never end."""
    for dirpath, dirs, files in os.walk(ckpt):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                raise DamagedCheckpoint(f"{path}: unreadable ({exc.strerror or exc})") from exc
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DamagedCheckpoint(f"{path}: not a regular file (a FIFO, socket or device): refused "
                                        "without opening it")


def verify_manifest(ckpt: Path) -> bool:
    """Check every file listed in manifest.json that is present against its size and sha256
    (DamagedCheckpoint on a mismatch); False when the checkpoint has no manifest (written before
    checksums were).  A listed file that is absent is left to the checks that need it (a missing
    training state is an error, not damage)."""
    path = ckpt / MANIFEST
    if not path.exists():
        return False
    try:
        files = read_json_file(path, strict_numbers=True)["files"]
        entries = [(name, int(meta["bytes"]), str(meta["sha256"])) for name, meta in files.items()]
    except (JsonError, NotARegularFile, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({exc})") from exc
    for name, size, digest in entries:
        file = ckpt / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise DamagedCheckpoint(f"{path}: lists {name!r}, outside the checkpoint")
        if not file.exists():  # a missing file is for the checks that need it (training state: an error)
            continue
        if file.stat().st_size != size:
            raise DamagedCheckpoint(f"{file}: {file.stat().st_size} bytes, {MANIFEST} says {size} (truncated?)")
        if _sha256(file) != digest:
            raise DamagedCheckpoint(f"{file}: its content does not match its sha256 in {MANIFEST} (damaged)")
    return True


def _count(state: dict, key: str, *, low: int = 0) -> int | None:
    value = state.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}"[:200])
    return value


def read_trainer_state(ckpt: Path) -> dict:
    """trainer_state.json, checked against what `write_state` writes: the step is ckpt-N's N (not
    Infinity, -5 or 1e300), the counts are integers >= 0, the sampler order a list of integers."""
    path = ckpt / "trainer_state.json"
    if not path.is_file():
        raise DamagedCheckpoint(f"{path} is missing")
    try:
        state = read_json_file(path, strict_numbers=True)
        if not isinstance(state, dict):
            raise ValueError("not an object")
        step = _count(state, "step")
        folder_step = int(CKPT_RE.match(ckpt.name).group(1)) if CKPT_RE.match(ckpt.name) else step
        if step is None or step != folder_step:
            raise ValueError(f"step {state.get('step')!r} is not the folder's step {folder_step}"[:200])
        for key in ("micro_step", "epoch"):
            _count(state, key)
        _count(state, "seed", low=-(2**63))  # any integer the config allows
        _count(state, "world", low=1)
        order = state.get("sampler_order")
        if order is not None and not (isinstance(order, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in order)):
            raise ValueError("sampler_order must be a list of integers >= 0")
    except (JsonError, NotARegularFile, ValueError) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({exc})") from exc
    return state


def check_training_state(path: Path, training) -> None:
    """training_state.pt holds {"optimizer": state_dict or None, "scheduler": state_dict or None}."""
    problem = None
    if not isinstance(training, dict):
        problem = f"a {type(training).__name__}, not a dict"
    else:
        optimizer, scheduler = training.get("optimizer"), training.get("scheduler")
        if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
                                          and isinstance(optimizer.get("param_groups"), list)
                                          and all(isinstance(g, dict) for g in optimizer["param_groups"])):
            problem = "its optimizer state is not an optimizer state_dict"
        elif scheduler is not None and not isinstance(scheduler, dict):
            problem = "its scheduler state is not a state_dict"
    if problem:
        raise DamagedCheckpoint(f"{path}: wrong shape ({problem})")


def check_rng(path: Path, rng) -> None:
    """rng_state.pt must be what `rng_state` writes: set on fresh generators, never the global ones."""
    try:
        random.Random().setstate(tuple(rng["python"]))
        np_state = rng["numpy"]
        np.random.RandomState().set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                                           np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
        torch.Generator().set_state(rng["torch"])
        cuda = rng.get("cuda")
        if cuda is not None and not (isinstance(cuda, (list, tuple))
                                     and all(isinstance(t, torch.Tensor) for t in cuda)):
            raise TypeError("cuda: not a list of tensors")
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise DamagedCheckpoint(f"{path}: wrong shape ({type(exc).__name__}: {why})") from exc
