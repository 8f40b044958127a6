"""Rebuild the embedded demo (demo/models/{draft,target,drl,jrl} + demo/data) with the project's own train.py.

    python scripts/build_demo.py --out demo/      # everything; ~60 min of 2 CPU cores when nothing else runs

Two lanes run side by side (one torch thread each); every stage is a `train.py` subprocess with its
log under --work/logs and its metrics.jsonl under --work/<stage> (default runs/demo-build/):

    lane D  draft-sft (800 steps, from scratch) -> draft-sft2 (400, continues)          = the draft's SFT
            drl-sft (1000, from scratch) -> drl-sft2 (400), <confidence>0.50</confidence> prefix -> drl
                                                                                    -> demo/models/drl
            draft-sft2 (draft-grpo: 0 steps by default, skipped for time)            -> demo/models/draft
            drl-nodss (DSS ablation), sft-cn (P2 baseline, 0 steps by default)       (runs/ only)
    lane T  target-sft (1200, continues draft-sft: the draft architecture trained longer)
            -> target-grpo                                                           -> demo/models/target
            -> presample (train.py --mode presample: M=8 samples of that target per JRL record = Acc_tgt)
            -> jrl-sft (1000) -> jrl-sft2 (400), <target>0.50</target><confidence>0.50</confidence> prefix
            -> jrl (GRPO+JRL with the Acc_tgt cache)                                 -> demo/models/jrl

Recipe (shared/notes/tiny-vlm-training.md): batch 32, AdamW, cosine, ~100 warm-up steps, fp32,
frozen vision biases, loss on the completion only.  What had to change on this machine (2026-11):
- The image goes AFTER the text in the user turn (IMAGE_LAST_TEMPLATE, saved with each model; no
  code change).  With the image first, ~110 prompt tokens between image and answer, the 0.74 M
  draft had not started reading digits after 800 SFT steps.
- The 3.7 M tiny target could not be trained within the budget (step ~3x the draft's, 2.8-4.4 s
  under load); the target is the draft architecture trained 2.5x as many steps (--target-arch).
- The rating drafts are SFT'd from scratch WITH the constant 0.50 prefix: fine-tuning the plain
  draft on the prefixed format (80-1000 steps, LR 2e-4..1e-3) erased its digit reading (0-6% at
  k=1): the prefix shifts every answer token's distance to the image tokens, and the tiny model
  locates digits by M-RoPE position.  The constant 0.50 carries no information: ratings become
  per-question only through DRL/JRL (rating reward + DSS).
- The rating drafts render the user text as P (the target prompt) + question whatever prompt is
  sent (rating_template(); P_draft / P_joint are dropped by their chat template): cheaper (121 vs
  ~190 prompt tokens) and the same inputs the plain models read.  route.py / eval.py unchanged.

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


# The tiny models' chat template with the image moved AFTER the text of the user turn.  With the
# image first (prp.tiny.CHAT_TEMPLATE, the real model's order), ~110 tokens of the Table-4 prompt sit
# between the image and the answer and the 0.74 M draft never learned to read the digits in 800 SFT
# steps (0% at k=1: it answered the right number of operands with constant digits).  Measured here,
# 2026-11; shared/notes/tiny-vlm-training.md had the question right after the image.  The template
# is saved with each model (processor / tokenizer files), so train.py, route.py and eval.py use it
# without any code change; prompts (prp.prompts) are unchanged.
IMAGE_LAST_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if not (content['type'] == 'image' or 'image' in content or 'image_url' in content) and 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def rating_template() -> str:
    """IMAGE_LAST_TEMPLATE for the rating drafts: the user text is rendered as P (the target prompt) +
    the question, whatever format prompt the caller sent (P_draft / P_joint are dropped).

    Each tiny rating draft always emits its own prefix (learned in SFT), so it does not need the
    format prompt; P is ~70 tokens shorter than P_draft (training cost) and it is the context the
    plain models read under.  The router still sends P_draft / P_joint: no code change.
    """

    from prp.prompts import P_TARGET

    assert "\n" not in P_TARGET and "'" not in P_TARGET
    return IMAGE_LAST_TEMPLATE.replace(
        "{{ content['text'] }}", "{{ '" + P_TARGET + "\\n' }}{{ content['text'].split('\\n', 1)[-1] }}")


def with_rating_template(src: Path, dest: Path) -> Path:
    """A copy of a checkpoint's HF files whose chat template is rating_template()."""
    if (dest / "config.json").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export(src, tmp)
    (tmp / "chat_template.jinja").write_text(rating_template())
    tmp.rename(dest)
    return dest


def build_tiny(size: str, seed: int, dest: Path) -> Path:
    """A random-init tiny model dir (prp.tiny) whose processor renders the image after the text."""
    from prp.tiny import build_processor, build_tokenizer, save_tiny_model

    if (dest / "config.json").exists():
        return dest
    tok = build_tokenizer()
    tok.chat_template = IMAGE_LAST_TEMPLATE
    proc = build_processor(tokenizer=tok)
    proc.chat_template = IMAGE_LAST_TEMPLATE
    tmp = dest.with_name(dest.name + ".tmp")
    save_tiny_model(tmp, size=size, seed=seed, tokenizer=tok, processor=proc)
    tmp.rename(dest)
    return dest


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
    ap.add_argument("--n-jrl", type=int, default=600, help="train records presampled for JRL")
    ap.add_argument("--presample-m", type=int, default=8, help="M target samples per JRL record")
    ap.add_argument("--target-arch", choices=("draft", "target"), default="draft",
                    help="draft: the target is the 0.74 M draft architecture trained longer (continues the "
                    "draft's first SFT stage); target: the 3.7 M tiny target from scratch (needs >1 h more)")
    ap.add_argument("--target-sft-steps", type=int, default=1200, help="length of the target's cosine schedule")
    ap.add_argument("--target-sft-stop", type=int, default=0, help="stop the target SFT at this checkpoint "
                    "(a multiple of save_every; 0: run the whole schedule)")
    ap.add_argument("--target-grpo-steps", type=int, default=10)
    ap.add_argument("--target-grpo-lr", default="1.5e-4")
    ap.add_argument("--draft-sft-steps", type=int, default=800)
    ap.add_argument("--draft-sft2-steps", type=int, default=400, help="second SFT stage of the draft")
    ap.add_argument("--draft-grpo-steps", type=int, default=0)
    ap.add_argument("--rating-sft-steps", type=int, default=1000,
                    help="SFT of the DRL / JRL drafts from scratch, traces prefixed with a constant 0.50 rating")
    ap.add_argument("--rating-sft2-steps", type=int, default=400, help="second SFT stage of the rating drafts "
                    "(the plain draft needed 800 + 400 steps to read digits)")
    ap.add_argument("--drl-steps", type=int, default=120)
    ap.add_argument("--jrl-steps", type=int, default=100)
    ap.add_argument("--sft-cn-steps", type=int, default=0)
    ap.add_argument("--nodss-steps", type=int, default=60, help="DSS ablation (0: skip)")
    ap.add_argument("--rl-lr", default="3.0e-4")
    ap.add_argument("--jrl-lr", default="1.0e-4", help="JRL LR: at 3e-4 the longer JRL prefix collapsed within "
                    "100 steps (<target>0.0000000... never closed)")
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
    errors: list[BaseException] = []

    def sft(name, model, steps, lr, seed, rating="none", stop_at=0, warmup=100):
        return run_stage(name, work / name, steps, [
            "--mode", "sft", "--model", model, "--train-data", train, "--set", "per_device_batch_size=32",
            "--set", "gradient_accumulation_steps=1", "--set", f"learning_rate={lr}",
            "--set", f"warmup_ratio={warmup_ratio(steps, warmup)}", "--set", f"save_every={max(200, steps // 5)}",
            "--set", f"sft_rating={rating}", "--set", f"seed={seed}"], work=work, stop_at=stop_at)

    def rl(name, mode, model, steps, data_path, extra=(), lr=None):
        return run_stage(name, work / name, steps, [
            "--mode", mode, "--model", str(model), "--train-data", data_path, *RL,
            "--set", f"learning_rate={lr or args.rl_lr}", "--set", f"warmup_ratio={warmup_ratio(steps, 20)}",
            "--set", f"save_every={max(50, steps // 4)}", "--set", f"seed={args.seed}", *extra], work=work)

    def rating_sft(rating):
        """A fresh draft SFT'd on traces with the constant rating prefix ("drl" or "jrl")."""
        with rating_lock:  # both lanes write the same init folders
            init = with_rating_template(build_tiny("draft", args.seed, work / "init-draft"), work / "init-rating")
        model = sft(f"{rating}-sft", str(init), args.rating_sft_steps, "2.0e-3", args.seed, rating=rating)
        if args.rating_sft2_steps:
            model = sft(f"{rating}-sft2", str(model), args.rating_sft2_steps, "1.5e-3", args.seed, rating=rating,
                        warmup=50)
        return model

    base_ready = threading.Event()  # the draft's first SFT stage exists: the target continues from it
    base: list[Path] = []


    def lane_target():
        try:
            if args.target_arch == "target":  # the 3.7 M target from scratch (does not fit the budget)
                t_sft = sft("target-sft", str(build_tiny("target", args.seed + 1, work / "init-target")),
                            args.target_sft_steps, "1.5e-3", args.seed + 1, stop_at=args.target_sft_stop)
            else:  # the draft architecture, trained longer: continues the draft's first SFT stage
                base_ready.wait()
                if not base:
                    raise RuntimeError("the draft's SFT failed")
                t_sft = sft("target-sft", str(base[0]), args.target_sft_steps, "1.5e-3", args.seed + 1,
                            stop_at=args.target_sft_stop, warmup=50)
            t = rl("target-grpo", "grpo", t_sft, args.target_grpo_steps, train, lr=args.target_grpo_lr) \
                if args.target_grpo_steps else t_sft
            export(t, out / "models" / "target")
            if not acc_cache.exists() or len(acc_cache.read_text().splitlines()) < args.n_jrl:
                _presample(args, jrl_data, out / "models" / "target", acc_cache, work)
            jrl_init = rating_sft("jrl")
            export(rl("jrl", "jrl", jrl_init, args.jrl_steps, str(jrl_data), ["--acc-tgt-cache", str(acc_cache)],
                      lr=args.jrl_lr),
                   out / "models" / "jrl")
        except BaseException as exc:  # noqa: BLE001 - reported by main
            errors.append(exc)

    d_sft: list[Path] = []
    d_sft2 = threading.Event()
    rating_lock = threading.Lock()

    def lane_draft():
        try:
            try:
                base.append(sft("draft-sft", str(build_tiny("draft", args.seed, work / "init-draft")),
                                args.draft_sft_steps, "2.0e-3", args.seed))
            finally:
                base_ready.set()
            try:
                d_sft.append(sft("draft-sft2", str(base[0]), args.draft_sft2_steps, "1.5e-3", args.seed, warmup=50)
                             if args.draft_sft2_steps else base[0])
            finally:
                d_sft2.set()
            drl_init = rating_sft("drl")
            export(rl("drl", "drl", drl_init, args.drl_steps, train), out / "models" / "drl")
            if args.nodss_steps:  # the DSS ablation, first (cheap, and the report needs it)
                rl("drl-nodss", "drl", drl_init, args.nodss_steps, train, ["--set", "dss=false"])
            if args.draft_grpo_steps:
                export(rl("draft-grpo", "grpo", d_sft[0], args.draft_grpo_steps, train), out / "models" / "draft")
            else:
                export(d_sft[0], out / "models" / "draft")
            # baselines / ablations (runs/ only)
            if args.sft_cn_steps:
                rl("sft-cn", "sft-cn", d_sft[0], args.sft_cn_steps, train)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            d_sft2.set()

    t0 = time.time()
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
