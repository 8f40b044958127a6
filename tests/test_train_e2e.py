"""End-to-end training on tiny models + synthetic data (CPU).

Default suite: one short in-process DRL run, and a 2-step run that fails inside step 2 and is
--resume'd to bit-exact weights.  Slow (`-m slow`): every mode, a 2-process DeepSpeed ZeRO-3 JRL
run, and the SIGKILL / --resume bit-exactness test (6 steps in subprocesses).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from prp.core.parsing import parse_completion
from train import materialise_specs

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")




def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_drl_end_to_end(tmp_path):
    from train import main

    final = main(["--mode", "drl", "--config", TINY, "--max-steps", "2", "--output-dir", str(tmp_path)])
    assert final == tmp_path / "ckpt-2"
    _model, info = AutoModelForImageTextToText.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    trained = load_file(final / "model.safetensors")
    init = load_file(next(tmp_path.glob("tiny-test-seed0")) / "model.safetensors")
    assert any(not torch.equal(init[k], trained[k]) for k in trained)  # it learned something
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/format", "reward/accuracy", "reward/rating_d", "rating_d_mae", "rating_d_std", "dss_d_rate",
                "zero_std_frac", "completion_len_mean", "completion_len_max", "truncated_frac", "tokens_per_s",
                "step_time_s", "lr"):
        assert key in rows[0], key
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "id", "completion", "d", "acc_dft"} <= set(samples[0])
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 2 and sorted(state["sampler_order"]) == list(range(16))


def test_rollouts_through_the_decode_engine(tmp_path, monkeypatch):
    """`rollout_engine: engine` reaches the rollout (the step passes it) and a DRL step trains with it."""
    from prp.train import rollout as ro
    from train import main

    seen = []
    real = ro.generate_rollout
    monkeypatch.setattr(ro, "generate_rollout", lambda *a, **kw: seen.append(kw["engine"]) or real(*a, **kw))
    final = main(["--mode", "drl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path),
                  "--set", "rollout_engine=engine"])
    assert final == tmp_path / "ckpt-1" and seen and set(seen) == {"engine"}
    assert [r["step"] for r in _metrics(tmp_path)] == [1]


def test_rl_micro_step_with_dss_rewrites_score_tokens(tmp_path, monkeypatch):
    """Steps 3-7 on a forced rollout: collapsed, wrong ratings -> DSS fires -> the substituted
    d' are written into the token sequences the loss sees, and those tokens carry alpha * A_d."""
    from prp.core.parsing import parse_completion
    from prp.train import step as st
    from prp.train.config import load_config
    from prp.train.groups import completion_segments
    from prp.train.loop import Trainer
    from prp.train.loss import Segment
    from prp.train.policy import forward_backward
    from prp.train.rollout import Rollout

    cache = tmp_path / "acc.jsonl"
    cache.write_text("".join(json.dumps({"id": f"train-{i:05d}", "acc": 0.25, "n": 4}) + "\n" for i in range(16)))
    cfg = materialise_specs(load_config(TINY, mode="jrl", overrides={"output_dir": str(tmp_path),
                                                                      "acc_tgt_cache": str(cache)}))
    t = Trainer(cfg)
    tok = t.ctx.policy.tok
    texts = ["<target>0.80</target><confidence>0.9</confidence><think>1+1=2</think><answer>$-1$</answer>"] * 4
    forced = [[*tok.encode(x, add_special_tokens=False), t.ctx.policy.eos_id] for x in texts]
    monkeypatch.setattr("prp.train.rollout.generate_rollout",
                        lambda model, proc, prompts, **kw: Rollout(prompts, forced, [False] * 4))
    out = st.rl_micro(t.ctx, 0, t.sampler.records_for(0))
    assert isinstance(out, st.MicroStepResult) and out.objective is st.Objective.PG
    comp = out.batch.input_ids[:, out.batch.prompt_len:]
    mask = out.batch.completion_mask.bool()
    parsed = [parse_completion(tok.decode(comp[i][mask[i]].tolist(), skip_special_tokens=True), "jrl")
              for i in range(4)]
    ds = [p.confidence for p in parsed]
    ts = [p.target for p in parsed]
    assert ds[3] == 0.9 and ts[3] == 0.8  # d_N, t_N kept
    assert ds[:3] != [0.9] * 3 and ts[:3] != [0.8] * 3  # d_1..d_{N-1} substituted (Acc_dft = 0, Acc_tgt = 0.25)
    assert all(p.format_ok for p in parsed)
    assert out.metrics["dss_d_rate"] == [1.0] and out.metrics["dss_t_rate"] == [1.0]
    # The score tokens of each row share one weight; A'_N = -sum A'_i (Eq. 6) -> the weights sum to 0.
    segs = [completion_segments(comp[i][mask[i]].tolist(), tok, "jrl") for i in range(4)]
    d_w = [out.weights[i][[j for j, s in enumerate(segs[i]) if s == Segment.DRAFT]] for i in range(4)]
    assert all(w.unique().numel() == 1 for w in d_w)
    assert abs(sum(w.sum().item() for w in d_w)) < 1e-5
    loss = forward_backward(t.ctx.policy, out.batch, out.weights, out.objective, temperature=out.temperature,
                            accumulation=1, bf16=False, d=t.d)
    assert loss == pytest.approx(0.0, abs=1e-5)  # ratio 1: the loss value is -mean(A)


def test_sft_mixed_writes_each_record_in_its_own_format(tmp_path):
    """sft_rating=mixed: each record gets one of the three formats (fixed by its id), with the prompt
    that asks for it: P -> plain trace, P_draft -> <confidence> prefix, P_joint -> <target><confidence>."""
    import zlib

    from prp.core.prompts import prompt_for
    from prp.train import step as st
    from prp.train.config import load_config
    from prp.train.loop import Trainer

    cfg = materialise_specs(load_config(TINY, mode="sft", overrides={
        "output_dir": str(tmp_path), "sft_rating": "mixed", "sft_rating_value": 0.3, "per_device_batch_size": 16,
        "max_completion_length": 64}))
    t = Trainer(cfg)
    records = t.sampler.records_for(0)
    out = st.sft_micro(t.ctx, 0, records)
    ids, prompt_len, tok = out.batch.input_ids, out.batch.prompt_len, t.ctx.policy.tok
    seen = set()
    for i, r in enumerate(records):
        fmt = st.SFT_FORMATS[zlib.crc32(r.id.encode()) % 3]
        seen.add(fmt)
        prompt = tok.decode(ids[i, :prompt_len], skip_special_tokens=True)
        completion = tok.decode(ids[i, prompt_len:][out.batch.completion_mask[i].bool()], skip_special_tokens=True)
        assert prompt_for("target" if fmt == "none" else fmt) in prompt
        prefix = {"none": "<think>", "drl": "<confidence>0.30</confidence><think>",
                  "jrl": "<target>0.30</target><confidence>0.30</confidence><think>"}[fmt]
        assert completion.startswith(prefix), (fmt, completion)
        assert completion.endswith(f"<answer>{r.answer}</answer>")
    assert seen == {"none", "drl", "jrl"}  # 16 records: all three formats occur


def test_sft_trace_field_is_configurable(tmp_path):
    """sft_reasoning names the record field of the trace (the demo target learns `reasoning_steps`);
    a record without it is skipped and counted, not trained on an empty trace."""
    import json

    from prp.train import step as st
    from prp.train.config import load_config
    from prp.train.loop import Trainer

    cfg = materialise_specs(load_config(TINY, mode="sft", overrides={
        "output_dir": str(tmp_path), "sft_reasoning": "reasoning_steps", "sft_rating": "none",
        "per_device_batch_size": 4, "max_completion_length": 64}))
    data = Path(cfg.train_data)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    del rows[0]["reasoning_steps"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = Trainer(cfg)
    assert t.skipped["no_reasoning"] == 1 and rows[0]["id"] not in {r.id for r in t.sampler.records}
    records = t.sampler.records_for(0)
    out = st.sft_micro(t.ctx, 0, records)
    tok, comp = t.ctx.policy.tok, out.batch.input_ids[:, out.batch.prompt_len:]
    for i, r in enumerate(records):
        text = tok.decode(comp[i][out.batch.completion_mask[i].bool()], skip_special_tokens=True)
        assert text == f"<think>{r.meta['reasoning_steps']}</think><answer>{r.answer}</answer>"


def test_sft_random_ratings_vary_and_replay(tmp_path):
    """sft_rating_value < 0: each record and step gets a uniform 0.00-0.99 rating, the same on a replay
    of that step (resume) and different on the next step."""
    from prp.train import step as st
    from prp.train.config import load_config
    from prp.train.loop import Trainer

    cfg = materialise_specs(load_config(TINY, mode="sft", overrides={
        "output_dir": str(tmp_path), "sft_rating": "jrl", "sft_rating_value": -1, "per_device_batch_size": 16,
        "max_completion_length": 64}))
    t = Trainer(cfg)

    def ratings(micro):
        out = st.sft_micro(t.ctx, micro, t.sampler.records_for(0))
        comp = out.batch.input_ids[:, out.batch.prompt_len:]
        texts = [t.ctx.policy.tok.decode(comp[i][out.batch.completion_mask[i].bool()], skip_special_tokens=True)
                 for i in range(comp.shape[0])]
        parsed = [parse_completion(x, "jrl") for x in texts]
        assert all(p.format_ok for p in parsed)
        return [(p.target, p.confidence) for p in parsed]

    first = ratings(0)
    values = [v for pair in first for v in pair]
    assert all(0.0 <= v <= 0.99 and round(v, 2) == v for v in values)
    assert len(set(values)) > 8  # 32 draws from 100 values
    assert ratings(0) == first and ratings(1) != first


def _check_embedded_default(first_line: str, out: Path) -> None:
    assert first_line.startswith("train.py: embedded default (the shipped demo draft demo/models/draft")
    assert "--config configs/drl.yaml --model DIR --train-data FILE" in first_line
    assert (out / "ckpt-1" / "model.safetensors").exists() and (out / "data" / "train.jsonl").exists()
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"].endswith("demo/models/draft") and saved["learning_rate"] == 2e-4  # the demo's DRL recipe
    assert saved["train_data"].endswith("runs/train-drl/data/train.jsonl")  # synthetic:16, generated
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 16
    assert _metrics(out)[0]["reward/format"] is not None


_NEEDS_DEMO = pytest.mark.skipif(not (ROOT / "demo" / "models" / "draft" / "config.json").exists(),
                                 reason="demo checkpoints not built (python scripts/build_demo.py --out demo)")


@_NEEDS_DEMO
def test_embedded_default_trains_with_no_config_and_no_model(tmp_path, monkeypatch, capsys):
    """`train.py --mode drl` alone (in-process; the step count capped by PRP_DEFAULT_STEPS): the shipped demo
    draft on generated synthetic data into ./runs/train-drl/, and a first line saying so."""
    from train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRP_DEFAULT_STEPS", "1")
    assert main(["--mode", "drl"]) == Path("runs/train-drl/ckpt-1")
    _check_embedded_default(capsys.readouterr().out.splitlines()[0], tmp_path / "runs" / "train-drl")


@pytest.mark.slow
@_NEEDS_DEMO
def test_embedded_default_as_a_command(tmp_path):
    """`python train.py --mode drl`, exactly as a user types it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRP_DEFAULT_STEPS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--mode", "drl"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_embedded_default(proc.stdout.splitlines()[0], tmp_path / "runs" / "train-drl")


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train import main

    main(["--mode", "drl", "--config", TINY, "--max-steps", "2", "--output-dir", str(tmp_path),
          "--report-to", "tensorboard", "--set", "gradient_accumulation_steps=1"])
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = _metrics(tmp_path)
    assert {"reward/format", "reward/rating_d", "rating_d_valid_frac", "dss_d_rate", "advantage/d_abs_mean", "loss",
            "lr", "completion_len_mean", "tokens_per_s", "skipped/prompt_too_long"} <= tags
    for key in {k for r in rows for k in r} - {"step", "skipped"}:  # the same values as metrics.jsonl
        expected = [(r["step"], r[key]) for r in rows if r[key] is not None]  # null (e.g. no valid rating): no point
        got = [(e.step, e.value) for e in acc.Scalars(key)] if key in tags else []
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key
    texts = acc.Tags()["tensors"]  # add_text is stored as a tensor summary
    assert any(t.startswith("samples") for t in texts) and any(t.startswith("config") for t in texts)


def test_learning_rate_inf_is_refused_before_training(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"extends: {TINY}\nlearning_rate: inf\n")
    proc = _run(["--config", str(cfg), "--output-dir", str(tmp_path / "out")], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["train.py: error: learning_rate must be a finite number > 0, got inf"]
    assert not list((tmp_path / "out").glob("ckpt-*")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize(("lr", "step", "what"), [
    ("1e20", 3, "the sampling probabilities are not finite"),  # the weights overflow the logits at step 3
    ("1e38", 1, "the update overflows"),  # AdamW's step size itself overflows float
])
def test_divergence_stops_with_a_clear_error_and_no_checkpoint(tmp_path, lr, step, what):
    """A finite but absurd learning rate: the run stops with NonFiniteError at the step where the numbers
    break, and writes no checkpoint of the broken weights."""
    from prp.train.policy import NonFiniteError
    from train import main

    with pytest.raises(NonFiniteError, match=rf"training diverged: {what}.* at step {step} .*lower learning_rate"):
        main(["--mode", "drl", "--config", TINY, "--max-steps", "4", "--output-dir", str(tmp_path),
              "--set", f"learning_rate={lr}", "--set", "save_every=4", "--set", "gradient_accumulation_steps=1"])
    assert not list(tmp_path.glob("ckpt-*"))
    rows = _metrics(tmp_path) if (tmp_path / "metrics.jsonl").exists() else []
    assert [r["step"] for r in rows] == list(range(1, step))


def test_bad_rows_are_skipped_and_counted(tmp_path):
    """Malformed lines, a missing and a corrupt image, an unparsable gold answer: dropped at load, counted
    in every metrics row; an image that breaks after loading is counted at run time; no crash."""
    from prp.toy.synthetic import build_benchmark
    from train import main

    data = build_benchmark(tmp_path / "data", seed=0, sizes={"train": 8})["train"]
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    (tmp_path / "data" / "corrupt.png").write_bytes(b"not a png")
    extra = ["{not json", json.dumps({**rows[0], "id": "m1", "image": "missing.png"}),
             json.dumps({**rows[0], "id": "c1", "image": "corrupt.png"})]
    data.write_text("".join(x + "\n" for x in [*map(json.dumps, rows), *extra]))
    final = main(["--mode", "drl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "out"),
                  "--train-data", str(data), "--set", "gradient_accumulation_steps=1"])
    assert final == tmp_path / "out" / "ckpt-1"
    skipped = _metrics(tmp_path / "out")[0]["skipped"]
    assert sum(skipped.values()) == 3 and skipped.get("missing_image") == 1, skipped


class _Interrupted(Exception):
    """Stands in for a crash inside a training step."""


def interrupt_in_step_2_then_resume(monkeypatch, caplog, main, common: list[str], out: Path) -> None:
    """Run `main(common)` into `out`, failing inside step 2 (after ckpt-1 was written), then `--resume` it
    to ckpt-2 (also used by tests/test_lora.py)."""

    from prp.train.loop import Trainer
    real_micro_step = Trainer.micro_step

    def failing_micro_step(self, micro):
        if micro >= self.cfg.gradient_accumulation_steps:  # the first micro-step of step 2
            raise _Interrupted
        return real_micro_step(self, micro)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "micro_step", failing_micro_step)
        with pytest.raises(_Interrupted):
            main([*common, "--output-dir", str(out)])
    assert (out / "ckpt-1").is_dir() and not (out / "ckpt-2").exists()
    with caplog.at_level(logging.INFO, logger="prp.train"):
        assert main([*common, "--output-dir", str(out), "--resume"]) == out / "ckpt-2"
    assert any("resumed from" in r.getMessage() for r in caplog.records)


def test_exception_in_step_2_then_resume_is_bit_exact(tmp_path, monkeypatch, caplog):
    """Short in-process version of the slow SIGKILL test: a 2-step run that fails inside step 2
    (after ckpt-1 was written) and is then --resume'd ends with exactly the weights of an
    uninterrupted 2-step run, and logs each step's metrics and samples once."""
    from train import main

    common = ["--mode", "drl", "--config", TINY, "--max-steps", "2", "--set", "save_every=1"]
    assert main([*common, "--output-dir", str(tmp_path / "ref")]) == tmp_path / "ref" / "ckpt-2"
    out = tmp_path / "interrupted"
    interrupt_in_step_2_then_resume(monkeypatch, caplog, main, common, out)
    a = load_file(tmp_path / "ref" / "ckpt-2" / "model.safetensors")
    b = load_file(out / "ckpt-2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    # tiny.yaml: 2 samples per micro-step, 2 micro-steps per step; each step's samples once
    steps = [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (tmp_path / "ref" / "samples.jsonl").read_text().splitlines()]
    assert steps == ref_steps == [1, 1, 1, 1, 2, 2, 2, 2]
    init = load_file(next((tmp_path / "ref").glob("tiny-test-seed0")) / "model.safetensors")
    assert any(not torch.equal(init[k], a[k]) for k in a)  # the runs trained: equal weights mean something


# ---------------------------------------------------------------- slow


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grpo", "jrl", "sft", "sft-cn", "presample"])
def test_every_mode_runs(mode, tmp_path):
    from train import main

    main(["--mode", mode, "--config", TINY, "--max-steps", "2", "--output-dir", str(tmp_path)])
    if mode == "presample":
        assert len((tmp_path / "acc_tgt.jsonl").read_text().splitlines()) == 16
        return
    assert (tmp_path / "ckpt-2" / "model.safetensors").exists() and len(_metrics(tmp_path)) == 2
    if mode == "jrl":  # presampled on the fly with the tiny target
        assert len((tmp_path / "acc_tgt.jsonl").read_text().splitlines()) == 16
    if mode == "sft-cn":
        tok = json.loads((tmp_path / "ckpt-2" / "tokenizer.json").read_text())
        assert {"[CN]", "[UN]"} <= {t["content"] for t in tok["added_tokens"]}


def deepspeed_launch(*args: str) -> tuple[list[str], dict[str, str]]:
    """(command, env) for `deepspeed ARGS` as the tests run it: the launcher installed beside this
    interpreter (CI runs the venv's python without activating it), its python first on PATH for the
    ranks it starts, one thread per rank (also used by tests/test_lora.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
    return [str(Path(sys.executable).with_name("deepspeed")), *args], env


@pytest.mark.slow
def test_deepspeed_zero3_two_processes(tmp_path):
    cmd, env = deepspeed_launch("--num_gpus", "2", "train.py", "--mode", "jrl", "--config", TINY, "--max-steps", "2",
                                "--output-dir", str(tmp_path))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt-2")
    assert sum(p.numel() for p in model.parameters()) > 100_000  # full, gathered weights
    assert (tmp_path / "ckpt-2" / "ds").is_dir() and len(_metrics(tmp_path)) == 2
    # one optimizer update per trainer step (tiny.yaml accumulates 2 micro-steps per update)
    for states in (tmp_path / "ckpt-2" / "ds" / "ds").glob("*model_states.pt"):  # one per rank, our own files
        assert torch.load(states, weights_only=False, map_location="cpu")["global_steps"] == 2


# ~30-70 s on 2 cores (two 6-step subprocess runs + a resume); its essence, resume ending bit-exact with an
# uninterrupted run, stays in the default suite: test_exception_in_step_2_then_resume_is_bit_exact.
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path):
    """Kill a run with SIGKILL after checkpoint 2 is written and step 3 has started; --resume must
    end with exactly the weights of an uninterrupted run."""
    common = ["--mode", "drl", "--config", TINY, "--max-steps", "6", "--set", "save_every=2"]
    ref = _run([*common, "--output-dir", str(tmp_path / "ref")], timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRP_TEST_MARKERS": "1"}  # the step / checkpoint lines
    proc = subprocess.Popen([sys.executable, "train.py", *common, "--output-dir", str(out),
                             "--set", "step_delay_s=0.5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen_ckpt = False
    deadline = time.time() + 300
    for line in proc.stdout:
        seen_ckpt |= line.strip() == "prp-checkpoint 2"
        if seen_ckpt and line.strip() == "prp-step-start 3":
            time.sleep(0.3)  # inside step 3 (its start delay), before any later checkpoint
            break
        assert time.time() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "ckpt-2").is_dir() and not (out / "ckpt-4").exists()

    resumed = _run([*common, "--output-dir", str(out), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = load_file(tmp_path / "ref" / "ckpt-6" / "model.safetensors"), load_file(out / "ckpt-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5, 6]
    # samples.jsonl trimmed like metrics.jsonl: each step's samples once (tiny.yaml: 2 per micro-step, 2 micro-steps)
    steps = [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (tmp_path / "ref" / "samples.jsonl").read_text().splitlines()]
    assert steps == ref_steps == [s for s in range(1, 7) for _ in range(4)]
    init = load_file(next((tmp_path / "ref").glob("tiny-test-seed0")) / "model.safetensors")
    assert any(not torch.equal(init[k], a[k]) for k in a)


def test_resume_with_another_process_count_is_refused(tmp_path):
    """The data order of each rank depends on the process count: a checkpoint written by 2 processes
    is not resumed by 1 (one clear error), unless only its weights are kept."""
    from prp.train import checkpoint as ckpt_io
    from prp.train.config import ConfigError
    from train import main

    common = ["--mode", "drl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path)]
    assert main(common) == tmp_path / "ckpt-1"
    state_file = tmp_path / "ckpt-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["world"] == 1
    state_file.write_text(json.dumps({**state, "world": 2}))
    ckpt_io.write_manifest(tmp_path / "ckpt-1")  # as a 2-process run would have written it (not damage)
    with pytest.raises(ConfigError, match="written by 2 processes, this run has 1"):
        main([*common[:-2], "--max-steps", "2", "--output-dir", str(tmp_path), "--resume"])


@pytest.mark.parametrize("failure", ["oserror", "torch_writer"])
def test_full_disk_stops_with_one_line_naming_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, failure):
    """Issue 26 (9): a full disk ended in `RuntimeError: [enforce fail at inline_container.cc:672]` without
    saying the disk was full or which checkpoint is intact.  Step 2's save fails inside the writer."""
    import errno
    import shutil
    from collections import namedtuple

    from prp.core.cli import run_main
    from prp.train import checkpoint as ckpt_io
    from train import main

    real_save = torch.save
    usage = namedtuple("usage", "total used free")

    def full_disk_save(obj, f, *args, **kwargs):
        if "ckpt-2.tmp" in str(f):
            if failure == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))  # what df would say
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_io.torch, "save", full_disk_save)
    out = tmp_path / "out"
    argv = ["--mode", "drl", "--config", TINY, "--max-steps", "2", "--set", "save_every=1", "--output-dir", str(out)]
    assert run_main(main, argv, prog="train.py") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train.py:")]  # not the progress bars
    assert len(err) == 1 and err[0].startswith("train.py: error: the disk is full"), err
    assert f"the last good checkpoint is {out / 'ckpt-1'}" in err[0] and "--resume" in err[0]
    assert (out / "ckpt-1").is_dir() and not (out / "ckpt-2").exists() and not (out / "ckpt-2.tmp").exists()


def test_sft_cn_trains_on_a_presampled_labelled_set(tmp_path, monkeypatch):
    """Paradigm 2 as the paper builds it (Sec. 2.1, Sec. 5): N answers per question sampled once from the
    starting model into cn_presample.jsonl, labelled by evaluation's rule; training reads that fixed set
    (one example per answer) and a second run samples nothing."""
    from prp.core.prompts import CN_TOKEN, UN_TOKEN
    from prp.train import presample as ps
    from prp.train import rollout as ro
    from prp.train.config import load_config
    from prp.train.loop import Trainer
    from prp.train.step import cn_sequence

    cfg = materialise_specs(load_config(TINY, mode="sft-cn", overrides={"output_dir": str(tmp_path), "max_steps": 1}))
    assert cfg.sft_cn_sampling == "presampled"  # the paper's version is the default
    monkeypatch.setattr(ro, "generate_rollout", lambda *a, **kw: pytest.fail("presampled sft-cn must not sample"))
    t = Trainer(cfg)
    labelled = ps.read_cn_set(tmp_path / "cn_presample.jsonl")
    assert len(labelled) == 16 and all(len(v) == cfg.num_generations for v in labelled.values())
    by_id = {r.id.split("#")[0]: r for r in t.records}
    for rid, samples in labelled.items():  # every label is evaluation's verdict on the stored answer
        for s in samples:
            assert s["label"] == (CN_TOKEN if ps.judge_completion(s["text"], by_id[rid]) else UN_TOKEN)
    assert len(t.records) == 16 * cfg.num_generations and len(t.sampler.records_for(0)) == cfg.per_device_batch_size
    out = t.micro_step(0)  # one example = one prompt + its stored answer + [CN]/[UN] + EOS
    tok = t.ctx.policy.tok
    cn, un = tok.convert_tokens_to_ids(CN_TOKEN), tok.convert_tokens_to_ids(UN_TOKEN)
    for i, r in enumerate(t.sampler.records_for(0)):
        body = tok.encode(r.meta["cn_text"], add_special_tokens=False)[: cfg.max_completion_length - 2]
        seq, w = cn_sequence(body, r.meta["cn_label"] == CN_TOKEN, cn, un, t.ctx.policy.eos_id)
        got = out.batch.input_ids[i, out.batch.prompt_len:][out.batch.completion_mask[i].bool()].tolist()
        assert got == seq and out.weights[i, : len(w)].tolist() == w
    assert t.run() == tmp_path / "ckpt-1"
    monkeypatch.setattr(ps, "local_sampler", lambda *a, **kw: pytest.fail("the labelled set is complete"))
    assert len(Trainer(cfg, resume=True).records) == 16 * cfg.num_generations


def test_sft_cn_online_is_a_named_option(tmp_path):
    """sft_cn_sampling=online keeps re-sampling from the current policy each step (no labelled file)."""
    from prp.train.config import ConfigError, load_config
    from prp.train.loop import Trainer

    cfg = materialise_specs(load_config(TINY, mode="sft-cn", overrides={
        "output_dir": str(tmp_path), "max_steps": 1, "sft_cn_sampling": "online"}))
    t = Trainer(cfg)
    assert len(t.records) == 16 and not (tmp_path / "cn_presample.jsonl").exists()
    assert t.micro_step(0).batch.input_ids.shape[0] == cfg.per_device_batch_size  # 1 prompt x N samples
    with pytest.raises(ConfigError, match="sft_cn_sampling"):
        load_config(TINY, mode="sft-cn", overrides={"sft_cn_sampling": "offline"})
