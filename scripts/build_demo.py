"""Rebuild the embedded demo (demo/models/{draft,target,drl,jrl} + demo/data) with the project's own train.py.

    python scripts/build_demo.py --out demo/      # everything; ~70 min of 2 CPU cores (sum of the stage times)

Two lanes run side by side (one torch thread each); every stage is a `train.py` subprocess with its
log under --work/logs and its metrics.jsonl under --work/<stage> (default runs/demo2/):

    lane D  draft-sft (0.74 M, 3000 steps from scratch, sft_rating=mixed: each record in one of the
            three formats, so the one warm start answers P, P_draft and P_joint, rating 0.50)
            -> draft-sft-random (400 steps, uniform random ratings in the prefix)
            -> draft-grpo                                                  -> demo/models/draft
            -> drl (DRL, Alg. 3)                                           -> demo/models/drl
            -> drl-nodss (DSS ablation), drl-alpha<a> (Fig. 15 ablation), sft-cn (P2 baseline)  (runs/ only)
    lane T  target-sft (3.7 M tiny target, 2500 steps from scratch) -> target-sft2 (1500) -> target-grpo
                                                                   -> demo/models/target
            -> presample (train.py --mode presample: M samples of that target per JRL record = Acc_tgt)
            -> jrl (JRL, Alg. 4, from draft-grpo, with the Acc_tgt cache)  -> demo/models/jrl

Recipe (shared/notes/tiny-vlm-training.md): two-digit numbers on the 28-px grid, processor-mean
background, rope_theta 10, frozen vision biases, batch 32, AdamW (2e-3 draft / 1.5e-3 target),
cosine with ~100 warm-up steps, fp32, loss on the completion only.  What differs (measured here,
2026-11, see demo/README.md): the demo models' chat template (demo_template(), saved with each
model) renders a short format marker and the question instead of the ~150-token Table-4 prompt,
with the image last; the draft's text RoPE base is DRAFT_ROPE_THETA (1000); the rating prefix is
learned in the same SFT as the answer (a constant 0.50), so ratings carry information only after
DRL / JRL (rating reward + DSS).

Stages are resumable: one whose final checkpoint (`ckpt-<steps>`) exists is skipped; one whose
metrics.jsonl another process is writing is waited for.
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


# The demo models' chat template: instead of the ~150-token Table-4 prompt, a short format marker and
# the question: "[draft] " when the prompt asks for a <confidence> rating (P_draft), "[joint] " when it
# also asks for <target> (P_joint), nothing for P.  Why: the long prompts made each step ~3x slower
# and kept the 0.74 M draft from reading the digits within the budget (measured 2026-11, see
# demo/README.md); a model this size cannot follow instructions anyway, it learns the format in SFT.
# The template is saved with each model (processor / tokenizer files), so route.py / eval.py /
# train.py send the paper's prompts unchanged.
_IMAGE = "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
_TEXT = ("{% set text = content['text'] %}"
         "{% if '<target>' in text %}[joint] {% elif '<confidence>' in text %}[draft] {% endif %}"
         "{{ text.split('\\n')[-1] }}")


def demo_template() -> str:
    """The demo chat template: the format marker and question, then the image (next to the answer).

    The tiny models find each digit by its M-RoPE position relative to the answer token, so the
    distance image -> answer matters; see DRAFT_ROPE_THETA for what was measured."""
    image = _IMAGE + "<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    text = "{% if 'text' in content and content['type'] != 'image' %}" + _TEXT + "{% endif %}"
    body = "".join("{% for content in message['content'] %}" + p + "{% endfor %}" for p in (text, image))
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
            "{% else %}" + body + "<|im_end|>\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# The draft's text RoPE base.  prp.toy.tiny uses 10 so that the M-RoPE row / column angles of the image
# tokens differ enough (notes/tiny-vlm-training.md), and the plain-format target reads with it.  But
# at 10 every rotary frequency is >= 0.12 rad per position, so matching an image token by content
# depends on its distance to the answer token, and the draft's three formats (rating prefixes of 0,
# 9 and 18 tokens) shift that distance; 1000 adds slow frequencies (down to 0.002 rad / position)
# while rows / columns stay distinct.  Measured 2026-11, same data and schedule, share of the
# numbers the mixed-format draft read: image first + base 10: 6% after 3000 steps; image last +
# base 10: 0% after 900 (stopped there); image last + base 1000: 41% after 1200, 100% after 2400.
# Which of the two changes mattered more was not separated.
DRAFT_ROPE_THETA = 1000.0


def build_tiny(size: str, seed: int, dest: Path, *, rope_theta: float | None = None) -> Path:
    """A random-init tiny model dir (prp.toy.tiny) with demo_template(), optionally another text RoPE base."""
    from prp.toy.tiny import build_processor, build_tokenizer, save_tiny_model

    if (dest / "config.json").exists():
        return dest
    tok = build_tokenizer()
    tok.chat_template = demo_template()
    proc = build_processor(tokenizer=tok)
    proc.chat_template = demo_template()
    tmp = dest.with_name(dest.name + ".tmp")
    save_tiny_model(tmp, size=size, seed=seed, tokenizer=tok, processor=proc)
    if rope_theta is not None:
        config = json.loads((tmp / "config.json").read_text())
        config["text_config"]["rope_parameters"]["rope_theta"] = rope_theta
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(dest)
    return dest


def log(msg: str) -> None:
    print(f"[build_demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def final_ckpt(out: Path, steps: int) -> Path:
    return out / f"ckpt-{steps}"


def run_stage(name: str, out: Path, steps: int, args: list[str], *, work: Path) -> Path:
    """One train.py run; skipped when its final checkpoint exists, resumed from its latest one, waited for
    when another process is writing it."""
    done = final_ckpt(out, steps)
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
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
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
    ap.add_argument("--work", default="runs/demo2", help="training runs, logs, the train split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-validation", type=int, default=200)
    ap.add_argument("--n-jrl", type=int, default=800, help="train records presampled for JRL")
    ap.add_argument("--presample-m", type=int, default=8, help="M target samples per JRL record (paper: 16)")
    ap.add_argument("--draft-sft-steps", type=int, default=3000)
    ap.add_argument("--random-rating-steps", type=int, default=400,
                    help="draft SFT stage with uniform random ratings in the prefix: after SFT on the constant "
                    "0.50 alone, DRL's first rating changes (DSS) broke the format within 40 steps")
    ap.add_argument("--target-sft-steps", type=int, default=2500)
    ap.add_argument("--target-sft2-steps", type=int, default=1500,
                    help="second SFT stage of the target (LR 1e-3): the notes measured that the 3.7 M target "
                    "beats the draft only after ~3800 steps")
    ap.add_argument("--grpo-steps", type=int, default=40, help="GRPO after SFT, draft and target")
    ap.add_argument("--grpo-lr", default="1.5e-4", help="the draft's GRPO learning rate")
    ap.add_argument("--target-grpo-lr", default="3.0e-5", help="the target's: at 1.5e-4 its greedy test accuracy "
                    "fell from 32.8%% to 30.0%% in 40 steps")
    ap.add_argument("--drl-steps", type=int, default=300)
    ap.add_argument("--jrl-steps", type=int, default=300)
    ap.add_argument("--rl-lr", default="2.0e-4", help="DRL learning rate (and the ablations')")
    ap.add_argument("--jrl-lr", default="5.0e-5", help="JRL learning rate: at 2e-4 the two-rating prefix lost its "
                    "format after ~150 steps (format reward 0.98 -> 0.44, ratings like 7777...); at 1e-4 one run "
                    "kept it, another learned 4-digit ratings and skipped <think> (draft accuracy 30%% -> 19.5%%)")
    ap.add_argument("--ablation-steps", type=int, default=150, help="steps of each DSS / alpha ablation run")
    ap.add_argument("--alphas", default="1,1.5,5,10", help="alpha ablation (Fig. 15); empty: skip")
    ap.add_argument("--sft-cn-steps", type=int, default=150, help="P2 baseline (Sec. 2.1); 0: skip")
    ap.add_argument("--sft-cn-lr", default="3.0e-5", help="at 2e-4 the draft's accuracy fell from 44%% to 0 "
                    "within 40 sft-cn steps")
    ap.add_argument("--lanes", default="TD", help="T: the target lane, D: the draft lane (both by default)")
    args = ap.parse_args(argv)

    out, work = (ROOT / args.out).resolve(), (ROOT / args.work).resolve()
    data = work / "data"
    from prp.toy.synthetic import build_benchmark

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
    errors: list[BaseException] = []

    def sft(name, model, steps, lr, seed, rating="none", warmup=100, extra=()):
        return run_stage(name, work / name, steps, [*extra,
            "--mode", "sft", "--model", str(model), "--train-data", train, "--set", "per_device_batch_size=32",
            "--set", "gradient_accumulation_steps=1", "--set", f"learning_rate={lr}",
            "--set", f"warmup_ratio={warmup_ratio(steps, warmup)}", "--set", f"save_every={max(200, steps // 5)}",
            "--set", f"sft_rating={rating}", "--set", f"seed={seed}"], work=work)

    def rl(name, mode, model, steps, data_path=train, extra=(), lr=None):
        return run_stage(name, work / name, steps, [
            "--mode", mode, "--model", str(model), "--train-data", data_path, *RL,
            "--set", f"learning_rate={lr or args.rl_lr}", "--set", f"warmup_ratio={warmup_ratio(steps, 20)}",
            "--set", f"save_every={max(50, steps // 4)}", "--set", f"seed={args.seed}", *extra], work=work)

    draft_ready = threading.Event()  # lane T's JRL starts from lane D's draft
    draft: list[Path] = []

    def lane_draft():
        try:
            try:
                init = build_tiny("draft", args.seed, work / "init-draft", rope_theta=DRAFT_ROPE_THETA)
                base = sft("draft-sft", init, args.draft_sft_steps, "2.0e-3", args.seed, rating="mixed")
                if args.random_rating_steps:  # the rating digits vary: DRL can move them without breaking the format
                    base = sft("draft-sft-random", base, args.random_rating_steps, "5.0e-4", args.seed + 3,
                               rating="mixed", warmup=20, extra=["--set", "sft_rating_value=-1"])
                draft.append(rl("draft-grpo", "grpo", base, args.grpo_steps, lr=args.grpo_lr)
                             if args.grpo_steps else base)
                export(draft[0], out / "models" / "draft")
            finally:
                draft_ready.set()
            export(rl("drl", "drl", draft[0], args.drl_steps), out / "models" / "drl")
            # ablations and baselines (runs/ only; benchmarks/reproduce_demo.py reads them)
            if args.ablation_steps:
                rl("drl-nodss", "drl", draft[0], args.ablation_steps, extra=["--set", "dss=false"])
                for a in filter(None, args.alphas.split(",")):
                    rl(f"drl-alpha{a}", "drl", draft[0], args.ablation_steps, extra=["--set", f"alpha={a}"])
            if args.sft_cn_steps:
                rl("sft-cn", "sft-cn", draft[0], args.sft_cn_steps, lr=args.sft_cn_lr)
        except BaseException as exc:  # noqa: BLE001 - reported by main
            errors.append(exc)
        finally:
            draft_ready.set()

    def lane_target():
        try:
            t_sft = sft("target-sft", build_tiny("target", args.seed + 1, work / "init-target"), args.target_sft_steps,
                        "1.5e-3", args.seed + 1)
            if args.target_sft2_steps:
                t_sft = sft("target-sft2", t_sft, args.target_sft2_steps, "1.0e-3", args.seed + 2, warmup=50)
            t = rl("target-grpo", "grpo", t_sft, args.grpo_steps, lr=args.target_grpo_lr) if args.grpo_steps else t_sft
            export(t, out / "models" / "target")
            if not acc_cache.exists() or len(acc_cache.read_text().splitlines()) < args.n_jrl:
                _presample(args, jrl_data, out / "models" / "target", acc_cache, work)
            draft_ready.wait()
            if not draft:
                raise RuntimeError("no draft to start JRL from: lane D failed or has not run (--lanes D)")
            export(rl("jrl", "jrl", draft[0], args.jrl_steps, str(jrl_data), ["--acc-tgt-cache", str(acc_cache)],
                      lr=args.jrl_lr), out / "models" / "jrl")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    if "D" not in args.lanes:  # lane T alone: JRL starts from the draft lane D built before
        done = [final_ckpt(work / "draft-grpo", args.grpo_steps)] if args.grpo_steps else []
        draft.extend(p for p in done if p.exists())
        draft_ready.set()
    t0 = time.time()
    lanes = [threading.Thread(target=fn) for key, fn in (("T", lane_target), ("D", lane_draft)) if key in args.lanes]
    for th in lanes:
        th.start()
    for th in lanes:
        th.join()
    log(f"total {(time.time() - t0) / 60:.1f} min")
    if errors:
        raise SystemExit(f"build failed: {errors}")
    log("accuracy per level, ratings and ablations: python benchmarks/reproduce_demo.py --work " + args.work)


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


if __name__ == "__main__":
    main()
