"""Rebuild the embedded demo (demo/models/{draft,target,drl,jrl} + demo/data) with the project's own train.py.

    python scripts/build_demo.py --out demo        # everything, end to end (timed: <work>/build_time.json)

Two lanes run side by side (one torch thread each); every stage is a `train.py` subprocess with its
log under --work/logs and its metrics.jsonl under --work/<stage> (default runs/demo2/):

    lane D  draft-sft (0.74 M, 4 layers, from scratch, sft_rating=mixed: each record in one of the
            three formats, so the one warm start answers P, P_draft and P_joint, rating 0.50;
            the trace writes the sum at once, `12+34=46`)
            -> draft-sft-random (uniform random ratings in the prefix)
            -> draft-grpo                                                  -> demo/models/draft
            -> drl (DRL, Alg. 3)                                           -> demo/models/drl
            -> dss-on / dss-off (Fig. 5: DRL from the collapsed draft-sft, with / without DSS),
               drl-alpha<a> (Fig. 15), sft-cn (P2 baseline)                   (runs/ only)
    lane T  target-sft (3.6 M, 12 layers of width 128, from scratch, plain format; the trace adds
            column by column, `12+34:2+4=6,0+1+3=4`; every level but the draft's own, level 5)
                                                                           -> demo/models/target
            -> presample (train.py --mode presample: M samples of that target per JRL record = Acc_tgt)
            -> jrl (JRL, Alg. 4, from draft-grpo, with the Acc_tgt cache)  -> demo/models/jrl

The benchmark (prp.toy.synthetic, docs/tiny-models.md): one, two or three numbers of 0-99 on the
28-px grid; level 4, three numbers with one hidden under a box (no model can solve it); level 5, one
number in the draft's style (mirrored digits on a dark band) that only the draft is trained on: the
two kinds of items JRL exists for.  Recipe: processor-mean background, frozen vision biases, batch 32, AdamW,
cosine with ~100 warm-up steps, fp32, loss on the completion only.  What differs between the two
models (measured here, 2026-11, see demo/README.md): the draft's text RoPE base is DRAFT_ROPE_THETA
(1000) and its chat template puts the image last; the target keeps prp.toy.tiny's 10 and the image
first; the target is deep and narrow (TARGET_SHAPE) and writes a longer, column-by-column trace:
a costlier, more reliable reasoner, as a large target model is.  The demo models' chat template
(demo_template(), saved with each model) renders a short format marker and the question instead
of the ~150-token Table-4 prompt; the rating prefix is learned in the same SFT as the answer, so
ratings carry information only after DRL / JRL (rating reward + DSS).

Each stage's recipe (mode, learning rate, steps, warm-up, batch, seed) is a YAML file in
configs/demo/<stage>.yaml (all extend configs/demo/base.yaml); this script only chains the stages
(which model and data each one starts from) and exports the results with save_pretrained.
`--stage-set drl:max_steps=100` changes one stage's value (the warm-up keeps its length in steps).

Stages are resumable: one whose final checkpoint (`ckpt-<steps>`) exists is skipped; one whose
metrics.jsonl another process is writing is waited for.  The build is deterministic from --seed
(fixed data, seeds and one thread per stage; since 2026-11-30 also the two lanes' initial models, which
were drawn from torch's one global RNG by two threads at once, prp.toy.tiny.build_tiny_model):
scripts/compare_builds.py checks a second build against the first, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

CONFIGS = ROOT / "configs" / "demo"  # one YAML per stage
STAGES = ("draft-sft", "draft-sft-random", "draft-grpo", "drl", "drl-ablation", "sft-cn",
          "target-sft", "presample", "jrl")


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


def demo_template(*, image_first: bool = False) -> str:
    """The demo chat template: the format marker and question, then the image (next to the answer);
    `image_first`: the image, then the question (the target's).

    The tiny models find each digit by its M-RoPE position relative to the answer token, so the
    distance image -> answer matters; see DRAFT_ROPE_THETA for what was measured."""
    image = _IMAGE + "<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    text = "{% if 'text' in content and content['type'] != 'image' %}" + _TEXT + "{% endif %}"
    parts = (image, text) if image_first else (text, image)
    user = "".join("{% for content in parts %}" + p + "{% endfor %}" for p in parts)
    # Only a user turn is shortened.  Every other turn (an assistant's partial message that a served
    # draft continues) renders its text as written, and a string content renders as one text part:
    # vLLM turns strings into lists of parts, and both must give the same prompt (docs/deploy.md).
    verbatim = "{% for content in parts %}{% if 'text' in content and content['type'] != 'image' %}" \
               "{{ content['text'] }}{% endif %}{% endfor %}"
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string "
            "else message['content'] %}"
            "{% if message['role'] == 'user' %}" + user + "{% else %}" + verbatim + "{% endif %}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# The draft's text RoPE base.  prp.toy.tiny uses 10 so that the M-RoPE row / column angles of the image
# tokens differ enough (prp/toy/tiny.py), and the plain-format target reads with it.  But
# at 10 every rotary frequency is >= 0.12 rad per position, so matching an image token by content
# depends on its distance to the answer token, and the draft's three formats (rating prefixes of 0,
# 9 and 18 tokens) shift that distance; 1000 adds slow frequencies (down to 0.002 rad / position)
# while rows / columns stay distinct.  Measured 2026-11, same data and schedule, share of the
# numbers the mixed-format draft read: image first + base 10: 6% after 3000 steps; image last +
# base 10: 0% after 900 (stopped there); image last + base 1000: 41% after 1200, 100% after 2400.
# Which of the two changes mattered more was not separated.
DRAFT_ROPE_THETA = 1000.0

# The target: deep and narrow (12 layers of width 128 vs the draft's 4 of 96; 3.6 M parameters).
# On a CPU a tiny model's time per generated token grows with its layer count (one set of kernel
# launches per layer), while its training cost grows with layers x width^2: 12 x 128 costs about what
# the previous 6 x 192 target did to train, but ~3-4x the draft's time per token (measured 2026-11).
TARGET_SHAPE = {"num_hidden_layers": 12, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 384,
                "vision_out_hidden_size": 128}


# Levels the target is not trained on (prp.toy.synthetic: level 5, the draft's mirrored style).
DRAFT_ONLY_LEVELS = (5,)


def build_tiny(size: str, seed: int, dest: Path, *, rope_theta: float | None = None, image_first: bool = False,
               **overrides) -> Path:
    """A random-init tiny model dir (prp.toy.tiny) with demo_template(), optionally another text RoPE base
    and other text-config values (`overrides`, e.g. num_hidden_layers)."""
    from prp.toy.tiny import build_processor, build_tiny_model, build_tokenizer

    if (dest / "config.json").exists():
        return dest
    template = demo_template(image_first=image_first)
    tok = build_tokenizer()
    tok.chat_template = template
    proc = build_processor(tokenizer=tok)
    proc.chat_template = template
    model = build_tiny_model(size, seed=seed, tokenizer=tok, **overrides)
    if rope_theta is not None:  # not a weight: only the saved config changes
        model.config.text_config.rope_parameters["rope_theta"] = rope_theta
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    proc.save_pretrained(tmp)  # also writes the tokenizer and chat template
    tmp.rename(dest)
    return dest


def log(msg: str) -> None:
    print(f"[build_demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def final_ckpt(out: Path, steps: int) -> Path:
    return out / f"ckpt-{steps}"


def stage_sets(name: str, overrides: dict[str, dict[str, str]]) -> list[str]:
    """`--set` arguments for a stage's --stage-set values; a changed max_steps keeps the warm-up's length in steps."""
    from prp.train.config import load_config

    sets = dict(overrides.get(name, {}))
    if "max_steps" in sets and "warmup_ratio" not in sets:
        cfg = load_config(CONFIGS / f"{name}.yaml", overrides={"model": "m", "train_data": "d"})
        warmup_steps = round(cfg.warmup_ratio * cfg.max_steps)
        sets["warmup_ratio"] = f"{min(0.5, warmup_steps / max(1, int(sets['max_steps']))):.4f}"
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def stage_config(name: str, sets: list[str]):
    """The stage's resolved TrainConfig (its YAML + --stage-set values)."""
    from prp.train.config import load_config, parse_set

    overrides = {"model": "m", "train_data": "d", **parse_set(sets[1::2])}
    return load_config(CONFIGS / f"{name}.yaml", overrides=overrides)


# stages this process did not train from scratch (done already or resumed): build_time.json's basis says so
REUSED: list[str] = []


def run_stage(name: str, out: Path, args: list[str], *, work: Path, stage: str | None = None,
              overrides: dict[str, dict[str, str]]) -> Path:
    """One train.py run of configs/demo/<stage>.yaml; skipped when its final checkpoint exists, resumed from
    its latest one, waited for when another process is writing it."""
    stage = stage or name
    sets = stage_sets(stage, overrides)
    done = final_ckpt(out, stage_config(stage, sets).max_steps)
    if done.exists():
        log(f"{name}: done already ({done})")
        REUSED.append(name)
        return done
    metrics = out / "metrics.jsonl"
    while metrics.exists() and time.time() - metrics.stat().st_mtime < 90 and not done.exists():
        log(f"{name}: another process is writing {metrics}; waiting")
        time.sleep(30)
    if done.exists():
        return done
    cmd = [PY, "train.py", "--config", str(CONFIGS / f"{stage}.yaml"), "--output-dir", str(out), *args, *sets]
    if (out / "config.json").exists() and any(out.glob("ckpt-*")):
        cmd.append("--resume")
        REUSED.append(name)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.time()
    with (work / "logs" / f"{name}.log").open("a") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0 or not done.exists():
        raise RuntimeError(f"{name} failed (rc {rc}); see {work / 'logs' / (name + '.log')}")
    log(f"{name}: finished in {(time.time() - t0) / 60:.1f} min")
    return done


# demo model -> the stage whose recipe made it (its prp.json records it)
MODEL_STAGES = {"draft": "draft-grpo", "drl": "drl", "jrl": "jrl", "target": "target-sft"}


def write_model_settings(dest: Path, stage: str, overrides: dict[str, dict[str, str]]) -> Path:
    """dest/prp.json (prp.core.recipe): the stage's mode and recipe, and how the demo routes it (the
    embedded default's rating and answer budget, prp.toy.demo.SHIPPED_DEMO)."""
    from prp.core.recipe import recipe_values, write_settings
    from prp.toy.demo import SHIPPED_DEMO
    from prp.train.config import TrainConfig

    cfg = stage_config(stage, stage_sets(stage, overrides))
    return write_settings(dest, mode=cfg.mode, rating=SHIPPED_DEMO.rating, max_new_tokens=SHIPPED_DEMO.max_new_tokens,
                          recipe=f"configs/demo/{stage}.yaml",
                          train=recipe_values(cfg.to_dict(), TrainConfig().to_dict()))


def export(ckpt: Path, dest: Path, stage: str, overrides: dict[str, dict[str, str]]) -> None:
    """A checkpoint's model and processor (weights, config, tokenizer, chat template) via save_pretrained,
    without the optimizer / trainer state, and its prp.json (`write_model_settings`)."""
    from transformers import AutoModelForImageTextToText

    from prp.core.modeling import load_processor

    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype="float32")
    processor = load_processor(ckpt)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    write_model_settings(tmp, stage, overrides)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log(f"exported {ckpt} -> {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.1f} MB)")


def parse_stage_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """["drl:max_steps=100", "jrl:learning_rate=1e-4"] -> {"drl": {"max_steps": "100"}, "jrl": {...}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        stage, _, kv = item.partition(":")
        if stage not in STAGES or "=" not in kv:
            raise SystemExit(f"--stage-set expects STAGE:KEY=VALUE with STAGE one of {', '.join(STAGES)}, got {item!r}")
        key, value = kv.split("=", 1)
        out.setdefault(stage, {})[key.strip().replace("-", "_")] = value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo", help="demo folder: models/ and data/ go here")
    ap.add_argument("--work", default="runs/demo2", help="training runs, logs, the train split")
    ap.add_argument("--seed", type=int, default=0, help="data seed; added to each stage's seed")
    ap.add_argument("--n-train", type=int, default=30000)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--n-validation", type=int, default=200)
    ap.add_argument("--n-jrl", type=int, default=800, help="train records presampled for JRL")
    ap.add_argument("--alphas", default="1,1.5,5,10", help="alpha ablation (Fig. 15); empty: skip")
    ap.add_argument("--skip", default="", help="comma-separated optional stages to leave out: draft-sft-random, "
                    "draft-grpo, drl-ablation, sft-cn")
    ap.add_argument("--stage-set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                    help="change one value of configs/demo/<STAGE>.yaml (repeatable), e.g. drl:max_steps=100")
    ap.add_argument("--lanes", default="TD", help="T: the target lane, D: the draft lane (both by default)")
    ap.add_argument("--settings-only", action="store_true",
                    help="only (re)write the prp.json of each model already under --out/models (no training)")
    args = ap.parse_args(argv)
    overrides = parse_stage_sets(args.stage_set)
    if args.settings_only:
        for name, stage_name in MODEL_STAGES.items():
            dest = ROOT / args.out / "models" / name
            if (dest / "config.json").is_file():
                log(f"wrote {write_model_settings(dest, stage_name, overrides)}")
        return
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}

    t0 = time.time()  # end to end: data, every stage, the exports
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
    # The target's data leaves out the draft's own domain (level 5, mirrored digits): the demo target has
    # never seen it, the capability mismatch JRL's t learns from the presampled Acc_tgt (Sec. 3.3).
    target_data = data / "train_target.jsonl"
    if not target_data.exists():
        lines = (data / "train.jsonl").read_text().splitlines()
        target_data.write_text("".join(x + "\n" for x in lines if json.loads(x)["level"] not in DRAFT_ONLY_LEVELS))
    acc_cache = work / "acc_tgt.jsonl"
    errors: list[BaseException] = []

    def stage(name, model, *, data_path=train, extra=(), config=None):
        """configs/demo/<config or name>.yaml from `model` on `data_path` into <work>/<name>."""
        cfg = stage_config(config or name, stage_sets(config or name, overrides))
        return run_stage(name, work / name, ["--model", str(model), "--train-data", data_path,
                                            "--set", f"seed={cfg.seed + args.seed}", *extra],
                         work=work, stage=config or name, overrides=overrides)

    draft_ready = threading.Event()  # lane T's JRL starts from lane D's draft
    draft: list[Path] = []

    def lane_draft():
        try:
            try:
                init = build_tiny("draft", args.seed, work / "init-draft", rope_theta=DRAFT_ROPE_THETA)
                collapsed = stage("draft-sft", init)  # every rating 0.50: the collapsed warm start of Fig. 5
                base = collapsed
                # the rating digits vary: DRL can move them without breaking the format
                if "draft-sft-random" not in skip:
                    base = stage("draft-sft-random", base)
                draft.append(stage("draft-grpo", base) if "draft-grpo" not in skip else base)
                export(draft[0], out / "models" / "draft", "draft-grpo", overrides)
            finally:
                draft_ready.set()
            export(stage("drl", draft[0]), out / "models" / "drl", "drl", overrides)
            # ablations and baselines (runs/ only; benchmarks/reproduce_demo.py reads them)
            if "drl-ablation" not in skip:
                # Sec. 3.2 / Fig. 5: DRL from the collapsed warm start, with and without DSS
                for dss in ("on", "off"):
                    stage(f"dss-{dss}", collapsed, config="drl-ablation",
                          extra=["--set", f"dss={'true' if dss == 'on' else 'false'}"])
                for a in filter(None, args.alphas.split(",")):
                    stage(f"drl-alpha{a}", draft[0], config="drl-ablation", extra=["--set", f"alpha={a}"])
            if "sft-cn" not in skip:
                stage("sft-cn", draft[0])
        except BaseException as exc:  # reported by main
            errors.append(exc)
        finally:
            draft_ready.set()

    def lane_target():
        try:
            init = build_tiny("target", args.seed + 1, work / "init-target", image_first=True, **TARGET_SHAPE)
            export(stage("target-sft", init, data_path=str(target_data)), out / "models" / "target", "target-sft",
                   overrides)
            if not acc_cache.exists() or len(acc_cache.read_text().splitlines()) < args.n_jrl:
                _presample(jrl_data, out / "models" / "target", acc_cache, work, overrides)
            draft_ready.wait()
            if not draft:
                raise RuntimeError("no draft to start JRL from: lane D failed or has not run (--lanes D)")
            export(stage("jrl", draft[0], data_path=str(jrl_data), extra=["--acc-tgt-cache", str(acc_cache)]),
                   out / "models" / "jrl", "jrl", overrides)
        except BaseException as exc:
            errors.append(exc)

    if "D" not in args.lanes:  # lane T alone: JRL starts from the draft lane D built before
        name = "draft-grpo" if "draft-grpo" not in skip else "draft-sft-random"
        done = work / name
        draft.extend([done] if any(done.glob("ckpt-*")) else [])  # a run folder: train.py takes its latest ckpt
        draft_ready.set()
    lanes = [threading.Thread(target=fn) for key, fn in (("T", lane_target), ("D", lane_draft)) if key in args.lanes]
    for th in lanes:
        th.start()
    for th in lanes:
        th.join()
    minutes = (time.time() - t0) / 60
    log(f"total {minutes:.1f} min")
    if errors:
        raise SystemExit(f"build failed: {errors}")
    if args.lanes == "TD":  # benchmarks/reproduce_demo.py reports it (item 7 of its claims)
        (work / "build_time.json").write_text(json.dumps({"minutes": round(minutes, 2), "basis": build_basis(REUSED),
                                                          "cpus": os.cpu_count(),
                                                          "finished": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    log("accuracy per level, ratings and ablations: python benchmarks/reproduce_demo.py --work " + args.work)


def build_basis(reused: list[str]) -> str:
    """build_time.json's basis: "timed end to end" only when every stage ran from scratch in this process.

    >>> build_basis([]), build_basis(["drl", "jrl"])
    ('timed end to end', 'timed, not end to end: 2 stages reused from an earlier run (drl, jrl)')
    """
    if not reused:
        return "timed end to end"
    return f"timed, not end to end: {len(reused)} stages reused from an earlier run ({', '.join(reused)})"


def _presample(jrl_data: Path, target: Path, cache: Path, work: Path, overrides: dict[str, dict[str, str]]) -> None:
    """Alg. 2 l.1-7 with train.py's presample mode: M samples of the trained target per JRL record."""
    cmd = [PY, "train.py", "--config", str(CONFIGS / "presample.yaml"), "--train-data", str(jrl_data),
           "--target-model", str(target), "--acc-tgt-cache", str(cache), "--output-dir", str(work / "presample"),
           *stage_sets("presample", overrides)]
    log("presample: " + " ".join(cmd[1:]))
    if cache.exists() and cache.stat().st_size:  # train.py --mode presample resumes from the cached records
        REUSED.append("presample")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with (work / "logs" / "presample.log").open("a") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"presample failed (rc {rc})")


if __name__ == "__main__":
    main()
