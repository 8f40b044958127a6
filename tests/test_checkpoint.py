"""Resume safety: damaged-latest fallback, missing training state, weights-only, no arbitrary pickles.

Checkpoints here are built from the checkpoint module's own writers around a one-layer model
(the resume checks read only config.json, the safetensors header and the small state files).
A DeepSpeed engine round trip (the allow-list against real ZeRO-3 files) is the slow test at the end.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prp.train import checkpoint as ckpt_io
from prp.train.checkpoint import CheckpointError


class Exploit:
    """A pickle that runs code on load: it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class Scale:
    """A plain data class, like DeepSpeed's LossScaler."""

    def __init__(self, value: float):
        self.value = value


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return model, optimizer, scheduler


def _save(out: Path, step: int, model, optimizer, scheduler, *, deepspeed_files: bool = False) -> Path:
    """One ckpt-<step> the way the trainer writes it (plain torch, or with a ds/ folder)."""
    tmp = ckpt_io.tmp_dir(out, step)
    (tmp / "config.json").write_text(json.dumps({"model_type": "linear"}))
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    ckpt_io.write_state(tmp, trainer_state={"step": step}, optimizer=None if deepspeed_files else optimizer,
                        scheduler=scheduler)
    if deepspeed_files:  # stand-ins with DeepSpeed's names (real ones: the slow test)
        ds = tmp / "ds" / "ds"
        ds.mkdir(parents=True)
        torch.save({"module": model.state_dict()}, ds / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {"step": step}}, ds / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return ckpt_io.commit(tmp, keep_last=0)


def _train_one_step(model, optimizer, scheduler):
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


@pytest.fixture
def run(tmp_path):
    """output_dir with ckpt-1 and ckpt-2 of a plain torch run."""
    model, optimizer, scheduler = _model_and_optimizer()
    for step in (1, 2):
        _train_one_step(model, optimizer, scheduler)
        _save(tmp_path, step, model, optimizer, scheduler)
    return tmp_path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------ intact resume


def test_resume_restores_optimizer_scheduler_and_rng(run):
    point = ckpt_io.find_resume_point(run, deepspeed=False)
    assert point.path.name == "ckpt-2" and point.step == 2 and not point.weights_only
    _model, optimizer, scheduler = _model_and_optimizer()
    torch.manual_seed(123)  # the checkpoint's RNG state must replace this one
    assert ckpt_io.restore(point, optimizer=optimizer, scheduler=scheduler) == 2
    # AdamW's step count and the LambdaLR position: lr = 0.1 / (2 + 1) after two scheduler steps
    assert next(iter(optimizer.state.values()))["step"].item() == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 3)
    assert torch.equal(torch.get_rng_state(), point.rng["torch"])


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    assert ckpt_io.find_resume_point(tmp_path, deepspeed=False) is None


# ------------------------------------------------------------------------------ damaged latest


@pytest.mark.parametrize("damage", ["training_state.pt", "rng_state.pt", "model.safetensors", "trainer_state.json"])
def test_damaged_latest_falls_back_to_the_previous_one(run, damage, caplog):
    target = run / "ckpt-2" / damage
    if damage.endswith(".json"):
        target.write_text('{"step": ')  # cut mid-write
    else:
        _truncate(target)
    with caplog.at_level(logging.WARNING, logger="prp.train.checkpoint"):
        point = ckpt_io.find_resume_point(run, deepspeed=False)
    assert point.path.name == "ckpt-1" and point.step == 1
    assert any("ckpt-2" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_every_checkpoint_damaged_is_an_error(run):
    for step in (1, 2):
        _truncate(run / f"ckpt-{step}" / "model.safetensors")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        ckpt_io.find_resume_point(run, deepspeed=False)


# ------------------------------------------------------------------------------ missing training state


def test_missing_training_state_is_an_error_unless_weights_only(run):
    (run / "ckpt-2" / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no training state.*--resume-weights-only"):
        ckpt_io.find_resume_point(run, deepspeed=False)

    point = ckpt_io.find_resume_point(run, deepspeed=False, weights_only=True)
    assert point.path.name == "ckpt-2" and point.weights_only and point.training_state is None
    _model, optimizer, scheduler = _model_and_optimizer()
    assert ckpt_io.restore(point, optimizer=optimizer, scheduler=scheduler) == 2
    assert optimizer.state_dict()["state"] == {}  # fresh optimizer
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 3)  # schedule at step 2: 0.1 / (2 + 1)


def test_deepspeed_resume_needs_the_ds_state(tmp_path):
    model, optimizer, scheduler = _model_and_optimizer()
    _save(tmp_path, 1, model, optimizer, scheduler)  # a plain torch checkpoint: no ds/
    with pytest.raises(CheckpointError, match=r"no training state \(ds/"):
        ckpt_io.find_resume_point(tmp_path, deepspeed=True)
    assert ckpt_io.find_resume_point(tmp_path, deepspeed=True, weights_only=True).step == 1
    _save(tmp_path, 2, model, optimizer, scheduler, deepspeed_files=True)  # the other way round
    with pytest.raises(CheckpointError, match="no torch optimizer state"):
        ckpt_io.find_resume_point(tmp_path, deepspeed=False)
    assert ckpt_io.find_resume_point(tmp_path, deepspeed=True).path.name == "ckpt-2"


# ------------------------------------------------------------------------------ no arbitrary pickles


def test_malicious_training_state_is_refused_and_never_runs(run, tmp_path_factory):
    marker = tmp_path_factory.mktemp("m") / "pwned"
    torch.save({"optimizer": Exploit(marker), "scheduler": None}, run / "ckpt-2" / "training_state.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*builtins\.exec"):
        ckpt_io.find_resume_point(run, deepspeed=False)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing"):
        ckpt_io.read_state(run / "ckpt-2")
    assert not marker.exists()


def test_malicious_deepspeed_state_is_refused_and_never_runs(tmp_path, tmp_path_factory):
    marker = tmp_path_factory.mktemp("m") / "pwned"
    model, optimizer, scheduler = _model_and_optimizer()
    ckpt = _save(tmp_path, 1, model, optimizer, scheduler, deepspeed_files=True)
    planted = ckpt / "ds" / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Exploit(marker)}, planted)
    with pytest.raises(CheckpointError, match=r"refusing to resume .*builtins\.exec"):
        ckpt_io.find_resume_point(tmp_path, deepspeed=True)
    # DeepSpeed's own load goes through SafeCheckpointEngine.load: refused before DeepSpeed is imported
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt_io.SafeCheckpointEngine(inner=None).load(str(planted), map_location="cpu")
    assert not marker.exists()


def test_allow_list_admits_only_the_named_classes(tmp_path):
    path = tmp_path / "scaler.pt"
    torch.save({"loss_scaler": Scale(2.0), "t": torch.ones(2)}, path)
    name = f"{Scale.__module__}.{Scale.__qualname__}"
    assert ckpt_io.unsafe_globals(path) == [name]
    with pytest.raises(CheckpointError, match="refusing"):
        ckpt_io.safe_torch_load(path)
    loaded = ckpt_io.safe_torch_load(path, allow=(name,))
    assert loaded["loss_scaler"].value == 2.0 and torch.equal(loaded["t"], torch.ones(2))
    assert set(ckpt_io.DEEPSPEED_SAFE_GLOBALS) == {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
    }
    _truncate(path)
    with pytest.raises(ckpt_io.DamagedCheckpoint, match="truncated"):
        ckpt_io.safe_torch_load(path, allow=(name,))


# ------------------------------------------------------------------------------ a real DeepSpeed engine

_DS_SCRIPT = textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch, deepspeed
    from prp.train import checkpoint as ckpt_io

    def engine():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        cfg = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": False}, "train_micro_batch_size_per_gpu": 1,
               "gradient_accumulation_steps": 1, "train_batch_size": 1, "steps_per_print": 10**9}
        eng, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg)
        return eng, opt, sched

    deepspeed.init_distributed()
    ckpt = Path(sys.argv[1])
    eng, opt, sched = engine()
    for _ in range(2):
        loss = eng(torch.ones(1, 8)).sum(); eng.backward(loss); eng.step()
    eng.save_checkpoint(str(ckpt / "ds"), tag="ds")
    files = sorted(p.name for p in (ckpt / "ds" / "ds").glob("*.pt"))
    unsafe = {p.name: torch.serialization.get_unsafe_globals_in_checkpoint(p)
              for p in (ckpt / "ds" / "ds").glob("*.pt")}
    [ckpt_io._resolve(n) for n in ckpt_io.DEEPSPEED_SAFE_GLOBALS]  # the names exist in this DeepSpeed
    fresh, _, _ = engine()
    ckpt_io.load_deepspeed_state(fresh, ckpt)  # the real files load through the allow-list
    same = all(torch.equal(a, b) for a, b in zip(eng.optimizer.fp32_partitioned_groups_flat,
                                                 fresh.optimizer.fp32_partitioned_groups_flat))
    planted = next((ckpt / "ds" / "ds").glob("*_optim_states.pt"))
    code = "open(" + repr(sys.argv[3]) + ", 'w').close()"
    class Exploit:
        def __reduce__(self):
            return (exec, (code,))
    torch.save({"optimizer_state_dict": Exploit()}, planted)
    try:
        ckpt_io.load_deepspeed_state(engine()[0], ckpt)
        refused = ""
    except ckpt_io.CheckpointError as exc:
        refused = str(exc)
    print("RESULT " + json.dumps({"files": files, "unsafe": unsafe, "same": same, "refused": refused}))
""")


@pytest.mark.slow
def test_deepspeed_resume_uses_the_allow_list_and_refuses_a_planted_pickle(tmp_path):
    """ZeRO-3 on CPU (gloo; first run JIT-builds DeepSpeed's shm op, ~30 s): save, load back through
    SafeCheckpointEngine, then plant a malicious optimizer file: refused, marker never created."""
    pytest.importorskip("deepspeed")
    marker = tmp_path / "pwned"
    script = tmp_path / "ds_roundtrip.py"
    script.write_text(_DS_SCRIPT)
    port = str(29600 + os.getpid() % 300)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), port, str(marker)],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert any(f.endswith("_optim_states.pt") for f in result["files"])
    allowed = set(ckpt_io.DEEPSPEED_SAFE_GLOBALS)
    assert all(set(names) <= allowed for names in result["unsafe"].values()), result["unsafe"]
    assert result["same"]  # the fp32 master partitions came back exactly
    assert "refusing to load" in result["refused"] and "builtins.exec" in result["refused"]
    assert not marker.exists()


# ------------------------------------------------------------------------------ issue 26 (9): damage the headers miss


def _fall_back_to_ckpt_1(run, caplog, reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="prp.train.checkpoint"):
        point = ckpt_io.find_resume_point(run, deepspeed=False)
    assert point.path.name == "ckpt-1" and point.step == 1
    warned = [r.getMessage() for r in caplog.records if "ckpt-2" in r.getMessage() and "damaged" in r.getMessage()]
    assert warned and re.search(reason, warned[0]), warned


def test_checkpoints_carry_a_checksum_manifest(run):
    manifest = json.loads((run / "ckpt-2" / "manifest.json").read_text())["files"]
    assert set(manifest) == {"config.json", "model.safetensors", "training_state.pt", "rng_state.pt",
                             "trainer_state.json"}
    import hashlib

    data = (run / "ckpt-2" / "model.safetensors").read_bytes()
    assert manifest["model.safetensors"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_zeros_written_into_the_weights_data_fall_back(run, caplog):
    """The safetensors header stays valid, so only the checksum can tell (was: resumed silently)."""
    weights = run / "ckpt-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # the tensor data follows the 8-byte length and the header
    data[start:] = bytes(len(data) - start)
    weights.write_bytes(bytes(data))
    _fall_back_to_ckpt_1(run, caplog, r"model\.safetensors.*sha256")


@pytest.mark.parametrize("step", ["Infinity", "-5", "1e300", "3", '"2"', "true", "NaN"])
def test_trainer_state_values_not_written_by_the_trainer_fall_back(run, caplog, step):
    """Infinity was an OverflowError, -5 a ValueError later, 1e300 "resumed at step 10...0" with nothing
    trained.  No manifest (a checkpoint written before them), so the value check itself must refuse it."""
    state = run / "ckpt-2" / "trainer_state.json"
    state.write_text(state.read_text().replace('"step": 2', f'"step": {step}'))
    (run / "ckpt-2" / "manifest.json").unlink(missing_ok=True)
    _fall_back_to_ckpt_1(run, caplog, r"trainer_state\.json: unreadable")


@pytest.mark.parametrize("name, value", [
    ("training_state.pt", [1, 2, 3]), ("training_state.pt", {"optimizer": [1], "scheduler": None}),
    ("rng_state.pt", {"python": 5}), ("rng_state.pt", [0]),
])
def test_wrong_shaped_state_files_fall_back(run, caplog, name, value):
    """Was: AttributeError / TypeError out of find_resume_point or restore.  No manifest, as above."""
    torch.save(value, run / "ckpt-2" / name)
    (run / "ckpt-2" / "manifest.json").unlink(missing_ok=True)
    _fall_back_to_ckpt_1(run, caplog, rf"{name}: wrong shape")


def test_a_fifo_in_a_checkpoint_is_refused_without_opening_it(run):
    """A FIFO named model.safetensors hung --resume forever (its reader waits for a writer, holding the
    GIL inside safetensors): checked in a child process, so the old behaviour fails the test, not the suite."""
    weights = run / "ckpt-2" / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
            "from prp.train import checkpoint as c\n"
            "print(c.find_resume_point(sys.argv[1], deepspeed=False).path.name)")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail("find_resume_point blocked on the FIFO")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ckpt-1" and "not a regular file" in proc.stderr
