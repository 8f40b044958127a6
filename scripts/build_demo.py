"""Rebuild the embedded demo (demo/models/{draft,target,drl,jrl} + demo/data) with the project's own train.py.

    python scripts/build_demo.py --out demo/            # everything, ~75-90 min on 2 CPU cores
    python scripts/build_demo.py --out demo/ --eval     # also print greedy accuracy per level at the end

Two lanes run side by side (one torch thread each), every stage a `train.py` subprocess with its
log and metrics under --work (default runs/demo-build/):

    lane T (target)  sft-target  ->  grpo-target  ->  presample (M samples of the trained target
                                                       on the JRL records: Acc_tgt)
    lane D (draft)   sft-draft   ->  grpo-draft                       -> demo/models/draft
                                 ->  sft-drl (prefix)  ->  drl        -> demo/models/drl
                                 ->  sft-jrl (prefix)  ->  [waits for presample]  ->  jrl  -> demo/models/jrl
                                 ->  sft-cn (the P2 baseline, runs/ only)
                                 ->  drl-nodss (the DSS ablation, runs/ only)

The rating prefix: DRL/JRL start from the SFT draft fine-tuned briefly on traces prefixed with a
constant `<confidence>0.50</confidence>` (JRL: `<target>0.50</target><confidence>0.50</confidence>`,
train.py's `sft_rating`), so the RL stage starts from a model that closes its tags.  The constant
carries no information: the ratings only become per-question through DRL/JRL (rating reward, DSS).

Stages are resumable: a stage whose final checkpoint (`ckpt-<steps>`) exists is skipped; one whose
metrics.jsonl is being written by another process is waited for.  Step budgets are CLI flags
(defaults: the measured budget that fits ~90 min on this 2-core CPU machine).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# recipe of shared/notes/tiny-vlm-training.md: batch 32, cosine, ~100 warm-up steps, fp32, 1 thread
COMMON = ["--config", "configs/tiny.yaml", "--set", "num_threads=1", "--set", "bf16=false",
          "--set", "freeze_vision_biases=true", "--set", "lr_scheduler=cosine", "--set", "keep_last=1",
          "--set", "max_completion_length=64"]
RL = ["--set", "per_device_batch_size=32", "--set", "num_generations=4", "--set", "gradient_accumulation_steps=1",
      "--set", "temperature=1.0", "--set", "sample_every=20", "--set", "num_samples_logged=4"]


def log(msg: str) -> None:
    print(f"[build_demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def final_ckpt(out: Path, steps: int) -> Path:
    return out / f"ckpt-{steps}"


def run_stage(name: str, out: Path, steps: int, args: list[str], *, work: Path, stop_at: int = 0) -> Path:
    """One train.py run; skipped when its final checkpoint exists, waited for when another process runs it.

    `stop_at` < steps: the run keeps the `steps`-step LR schedule but is stopped once `ckpt-<stop_at>`
    is written (that checkpoint is the stage's result).
    """
    done = final_ckpt(out, stop_at or steps)
    if done.exists():
        log(f"{name}: done already ({done})")
        return done
    metrics = out / "metrics.jsonl"
    while metrics.exists() and time.time() - metrics.stat().st_mtime < 90 and not done.exists():
        log(f"{name}: another process is writing {metrics}; waiting")
        time.sleep(30)
    if done.exists():
        return done
    cmd = [PY, "train.py", *COMMON, "--output-dir", str(out), "--max-steps", str(steps), *args]
    if (out / "config.json").exists() and any(out.glob("ckpt-*")):
        cmd.append("--resume")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.time()
    with (work / "logs" / f"{name}.log").open("a") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if stop_at and done.exists():
                proc.terminate()
                proc.wait()
                log(f"{name}: stopped at {done.name} (schedule of {steps} steps)")
                return done
            time.sleep(5)
        rc = proc.returncode
    if rc != 0 or not done.exists():
        raise RuntimeError(f"{name} failed (rc {rc}); see {work / 'logs' / (name + '.log')}")
    log(f"{name}: finished in {(time.time() - t0) / 60:.1f} min")
    return done


def export(ckpt: Path, dest: Path) -> None:
    """The HF files of a checkpoint (weights, config, tokenizer, processor), without optimizer state."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in ckpt.iterdir():
        if p.is_file() and not p.name.startswith(("optimizer", "trainer_state", "rng", "scheduler", "training")):
            shutil.copy2(p, dest / p.name)
    log(f"exported {ckpt} -> {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.1f} MB)")


def warmup_ratio(steps: int, warmup: int = 100) -> str:
    return f"{min(0.5, warmup / max(1, steps)):.4f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo", help="demo folder: models/ and data/ go here")
    ap.add_argument("--work", default="runs/demo-build", help="training runs, logs, the train split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-validation", type=int, default=200)
    ap.add_argument("--n-jrl", type=int, default=800, help="train records presampled for JRL")
    ap.add_argument("--presample-m", type=int, default=8, help="M target samples per JRL record")
    ap.add_argument("--target-sft-steps", type=int, default=1500, help="length of the target's cosine schedule")
    ap.add_argument("--target-sft-stop", type=int, default=1200, help="stop the target SFT at this checkpoint "
                    "(a multiple of 300; 0: run the whole schedule)")
    ap.add_argument("--target-grpo-steps", type=int, default=20)
    ap.add_argument("--draft-sft-steps", type=int, default=800)
    ap.add_argument("--draft-grpo-steps", type=int, default=100)
    ap.add_argument("--prefix-sft-steps", type=int, default=100)
    ap.add_argument("--drl-steps", type=int, default=400)
    ap.add_argument("--jrl-steps", type=int, default=300)
    ap.add_argument("--sft-cn-steps", type=int, default=80)
    ap.add_argument("--nodss-steps", type=int, default=150, help="DSS ablation (0: skip)")
    ap.add_argument("--rl-lr", default="2.0e-4")
    ap.add_argument("--lanes", default="TD", help="T: the target lane, D: the draft lane (both by default)")
    ap.add_argument("--eval", action="store_true", help="greedy accuracy per level of the exported models")
    args = ap.parse_args(argv)

    out, work = (ROOT / args.out).resolve(), (ROOT / args.work).resolve()
    data = work / "data"
    from prp.synthetic import build_benchmark

    if not (data / "train.jsonl").exists():
        build_benchmark(data, seed=args.seed, sizes={"train": args.n_train})
    if not (out / "data" / "test.jsonl").exists():
        build_benchmark(out / "data", seed=args.seed, sizes={"validation": args.n_validation, "test": args.n_test})
    jrl_data = data / "train_jrl.jsonl"
    if not jrl_data.exists():  # the JRL records: the first n of the train split (images shared)
        lines = (data / "train.jsonl").read_text().splitlines()[: args.n_jrl]
        jrl_data.write_text("".join(x + "\n" for x in lines))
    train = str(data / "train.jsonl")
    acc_cache = work / "acc_tgt.jsonl"
    presampled = threading.Event()
    errors: list[BaseException] = []

    def sft(name, model, steps, lr, seed, rating="none", stop_at=0):
        return run_stage(name, work / name, steps, [
            "--mode", "sft", "--model", model, "--train-data", train, "--set", "per_device_batch_size=32",
            "--set", "gradient_accumulation_steps=1", "--set", f"learning_rate={lr}",
            "--set", f"warmup_ratio={warmup_ratio(steps)}", "--set", f"save_every={max(200, steps // 5)}",
            "--set", f"sft_rating={rating}", "--set", f"seed={seed}"], work=work, stop_at=stop_at)

    def rl(name, mode, model, steps, data_path, extra=()):
        return run_stage(name, work / name, steps, [
            "--mode", mode, "--model", str(model), "--train-data", data_path, *RL,
            "--set", f"learning_rate={args.rl_lr}", "--set", f"warmup_ratio={warmup_ratio(steps, 20)}",
            "--set", f"save_every={max(50, steps // 4)}", "--set", f"seed={args.seed}", *extra], work=work)

    def lane_target():
        try:
            t_sft = sft("target-sft", "tiny:target", args.target_sft_steps, "1.5e-3", args.seed + 1,
                        stop_at=args.target_sft_stop)
            t = rl("target-grpo", "grpo", t_sft, args.target_grpo_steps, train) if args.target_grpo_steps else t_sft
            export(t, out / "models" / "target")
            if not acc_cache.exists() or len(acc_cache.read_text().splitlines()) < args.n_jrl:
                _presample(args, jrl_data, out / "models" / "target", acc_cache, work)
            (work / "presample.done").write_text("ok\n")
        except BaseException as exc:  # noqa: BLE001 - reported by main
            errors.append(exc)
        finally:
            presampled.set()

    def lane_draft():
        try:
            d_sft = sft("draft-sft", "tiny:draft", args.draft_sft_steps, "2.0e-3", args.seed)
            if args.draft_grpo_steps:
                export(rl("draft-grpo", "grpo", d_sft, args.draft_grpo_steps, train), out / "models" / "draft")
            else:
                export(d_sft, out / "models" / "draft")
            drl_init = sft("sft-drl", str(d_sft), args.prefix_sft_steps, "1.0e-3", args.seed, rating="drl")
            export(rl("drl", "drl", drl_init, args.drl_steps, train), out / "models" / "drl")
            jrl_init = sft("sft-jrl", str(d_sft), args.prefix_sft_steps, "1.0e-3", args.seed, rating="jrl")
            if args.sft_cn_steps:
                rl("sft-cn", "sft-cn", d_sft, args.sft_cn_steps, train, ["--set", "learning_rate=2.0e-4"])
            if args.nodss_steps:
                rl("drl-nodss", "drl", drl_init, args.nodss_steps, train, ["--set", "dss=false"])
            presampled.wait()
            while "T" not in args.lanes and not (work / "presample.done").exists():
                time.sleep(20)
            if not acc_cache.exists():
                raise RuntimeError("no Acc_tgt cache: the target lane failed")
            export(rl("jrl", "jrl", jrl_init, args.jrl_steps, str(jrl_data), ["--acc-tgt-cache", str(acc_cache)]),
                   out / "models" / "jrl")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t0 = time.time()
    if "T" not in args.lanes:
        presampled.set()  # the other lane runs elsewhere: the draft lane checks the cache itself
    lanes = [threading.Thread(target=fn) for key, fn in (("T", lane_target), ("D", lane_draft)) if key in args.lanes]
    for th in lanes:
        th.start()
    for th in lanes:
        th.join()
    log(f"total {(time.time() - t0) / 60:.1f} min")
    if errors:
        raise SystemExit(f"build failed: {errors}")
    if args.eval:
        for name in ("draft", "target"):
            print(name, json.dumps(accuracy_by_level(out / "models" / name, out / "data" / "test.jsonl")))


def _presample(args, jrl_data: Path, target: Path, cache: Path, work: Path) -> None:
    """Alg. 2 l.1-7 with train.py's presample mode: M samples of the trained target per JRL record."""
    cmd = [PY, "train.py", *COMMON, "--mode", "presample", "--train-data", str(jrl_data), "--target-model", str(target),
           "--acc-tgt-cache", str(cache), "--output-dir", str(work / "presample"),
           "--set", f"presample_m={args.presample_m}", "--set", "presample_batch_size=16", "--set", "temperature=1.0"]
    log("presample: " + " ".join(cmd[1:]))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with (work / "logs" / "presample.log").open("a") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"presample failed (rc {rc})")


def accuracy_by_level(model_dir, data, *, mode: str = "target", limit: int = 0, batch_size: int = 50) -> dict:
    """Greedy exact-match accuracy per level k of a plain (target-prompt) model on a JSONL split."""
    import torch

    from prp import generation as gen
    from prp.data import load_jsonl
    from prp.modeling import load_model, prepare_inputs
    from prp.prompts import build_messages
    from prp.rewards import accuracy_reward
    from prp.router import extract_answer

    model, proc = load_model(str(model_dir), device="cpu")
    recs = load_jsonl(data, check_images=False).records
    recs = recs[:limit] if limit else recs
    hits: dict[int, list[float]] = {}
    with torch.no_grad():
        for i in range(0, len(recs), batch_size):
            chunk = recs[i:i + batch_size]
            msgs = [build_messages(r.question, mode=mode) for r in chunk]
            inputs = prepare_inputs(proc, msgs, [r.load_image() for r in chunk], device=model.device)
            toks = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=48)
            for r, ids in zip(chunk, toks):
                ok = accuracy_reward(extract_answer(proc.tokenizer.decode(ids, skip_special_tokens=True)), r.answer)
                hits.setdefault(int(r.meta.get("level", 0)), []).append(float(ok or 0.0))
    out = {f"k={k}": round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
    out["mean"] = round(sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values()), 3)
    return out


if __name__ == "__main__":
    main()
