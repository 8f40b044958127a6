"""Train the PRP draft model: GRPO, DRL (Alg. 1), JRL (Alg. 2), SFT warm start, [CN]/[UN] baseline, presampling.

    python train.py --mode drl                                       # embedded default: the shipped demo, on CPU
    python train.py --config configs/paper.yaml --mode drl --model runs/grpo --train-data data/mmk12/train.jsonl
    deepspeed --num_gpus 7 train.py --config configs/drl.yaml        # the paper's run (ZeRO-3)
    python train.py --mode drl --config configs/tiny.yaml --max-steps 2 --output-dir runs/tiny-drl
    python train.py --config configs/drl.yaml --resume               # continue from the latest complete checkpoint
    python train.py --config configs/drl.yaml --lora-rank 16         # train a LoRA adapter only (App. D)

Modes:
  grpo      format + accuracy rewards only (Eq. 1-2), plain target-style prompt
  drl       Draft Rating Learning: <confidence>d</confidence> before thinking (Alg. 1, Eq. 3-7, DSS)
  jrl       Joint Rating Learning: <target>t</target><confidence>d</confidence> (Alg. 2, Eq. 8); needs
            Acc_tgt: from --acc-tgt-cache, else presampled with target_model first
  sft       supervised warm start on reference traces <think>reasoning</think><answer>answer</answer>
  sft-cn    Paradigm-2 baseline: pre-sample N answers per question, label [CN]/[UN], fine-tune (Sec. 2.1)
  presample sample the target M times per record -> Acc_tgt cache (Alg. 2 l.1-7), resumable

Without --config and --model, `--mode M` trains on the embedded default: the shipped demo draft
(demo/models/draft; JRL presamples Acc_tgt with demo/models/target), synthetic training data
generated into the output folder, the demo's recipe for the mode (configs/demo/), a short run into
runs/train-M/ ($PRP_DEFAULT_STEPS steps, default 30).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path

from prp.train.config import MODES, ConfigError, TrainConfig, load_config, parse_set
from prp.train.modes import get_mode

ROOT = Path(__file__).resolve().parents[2]  # the repository: demo/ and configs/ live beside prp/
DEMO_MODELS = ROOT / "demo" / "models"
# the embedded default: mode -> the demo build stage whose recipe it runs (configs/demo/<stage>.yaml)
DEFAULT_STAGE = {"grpo": "draft-grpo", "drl": "drl", "jrl": "jrl", "sft": "draft-sft-random", "sft-cn": "sft-cn",
                 "presample": "presample"}
DEFAULT_STEPS = 30  # a minute or two of 2 CPU cores (docs/training.md)
DEFAULT_RECORDS = {"sft": 512, "jrl": 64, "presample": 32}  # at most this many synthetic records; others: 256


def embedded_default(mode: str, *, max_steps: int | None) -> tuple[Path, dict[str, str], str]:
    """(config file, overrides, the line that says what runs) of `python train.py --mode M` alone."""
    draft, target = DEMO_MODELS / "draft", DEMO_MODELS / "target"
    for path in (draft, target):
        if not (path / "config.json").is_file():
            raise ConfigError(f"the embedded default needs the shipped demo model {path}; rebuild it with "
                              "python scripts/build_demo.py --out demo, or pass --config configs/<mode>.yaml "
                              "--model DIR --train-data FILE")
    steps = max_steps or int(os.environ.get("PRP_DEFAULT_STEPS", DEFAULT_STEPS))
    # enough records for the run's prompts (the demo recipe's batch: 32 SFT prompts, 8 RL prompts x N = 4
    # per process and step), at most DEFAULT_RECORDS (later steps start another epoch)
    per_step = (32 if mode == "sft" else 8) * int(os.environ.get("WORLD_SIZE", "1"))
    n = min(DEFAULT_RECORDS.get(mode, 256), max(2, steps) * per_step)
    n = max(n, per_step)
    out = f"runs/train-{mode}"
    overrides = {"model": str(draft), "target_model": str(target), "train_data": f"synthetic:{n}",
                 "output_dir": out, "max_steps": str(steps), "acc_tgt_cache": "", "save_every": str(steps)}
    what = (f"the shipped demo target {target.relative_to(ROOT)} on {n} synthetic records"
            if mode == "presample" else
            f"the shipped demo draft {draft.relative_to(ROOT)}, {n} synthetic records, {steps} step{'s' * (steps != 1)}"
            + (f", Acc_tgt presampled with {target.relative_to(ROOT)}" if mode == "jrl" else ""))
    line = (f"train.py: embedded default ({what}, recipe configs/demo/{DEFAULT_STAGE[mode]}.yaml) into {out}/; "
            f"for a real model and data: python train.py --config configs/{mode}.yaml --model DIR --train-data FILE")
    return ROOT / "configs" / "demo" / f"{DEFAULT_STAGE[mode]}.yaml", overrides, line


def _build_once(dest: Path, build) -> None:
    """`build(tmp)` then rename tmp -> dest, unless dest exists.  Every process (DeepSpeed ranks included)
    may run this at once: each builds the same bytes into its own folder, the first rename wins."""
    if dest.exists():
        return
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)


def materialise_specs(cfg: TrainConfig) -> TrainConfig:
    """The toy specs as plain paths under output_dir: `tiny:<size>` models (prp.toy.tiny, the draft from
    `seed`, a target from `seed + 1`) and `synthetic:<n>` data (prp.toy.synthetic), so prp.train sees folders
    and files only."""
    out = Path(cfg.output_dir)
    changes = {}
    mode = get_mode(cfg.mode)
    for key, seed, used in (("model", cfg.seed, mode.trains), ("target_model", cfg.seed + 1, mode.needs_acc_tgt)):
        spec = getattr(cfg, key)
        if used and spec.startswith("tiny:"):
            from prp.toy.tiny import save_tiny_model

            size = spec.split(":", 1)[1]
            path = out / f"tiny-{size}-seed{seed}"
            _build_once(path, lambda tmp, size=size, seed=seed: save_tiny_model(tmp, size=size, seed=seed))
            changes[key] = str(path)
    if cfg.train_data.startswith("synthetic:"):
        from prp.toy.synthetic import build_benchmark

        try:
            n = int(cfg.train_data.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"train_data {cfg.train_data!r}: expected synthetic:<number of records>") from None
        _build_once(out / "data", lambda tmp: build_benchmark(tmp, seed=cfg.seed, sizes={"train": n}))
        changes["train_data"] = str(out / "data" / "train.jsonl")
    return dataclasses.replace(cfg, **changes)


def build_parser() -> argparse.ArgumentParser:
    from prp.core.cli import HelpFormatter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--mode", choices=MODES, help="training mode (default: the config's mode, else drl)")
    ap.add_argument("--config",
                    help="YAML config: configs/paper.yaml (+ --mode), configs/<mode>.yaml, configs/tiny.yaml "
                         "(default: the recipe recorded in --model's prp.json, else the built-in defaults of "
                         "prp/train/config.py, the paper's full-scale values; no --config and no --model: the "
                         "embedded default)")
    ap.add_argument("--output-dir", help="checkpoints, metrics.jsonl, samples.jsonl (default: the config's "
                    "output_dir, else runs/train; the embedded default: runs/train-MODE)")
    ap.add_argument("--max-steps", type=int, help="optimizer steps, overriding num_epochs (default: the config's "
                    "max_steps, else 0 = num_epochs over the data; the embedded default: $PRP_DEFAULT_STEPS or 30)")
    ap.add_argument("--model",
                    help="draft model dir, a finished run's output dir (its latest checkpoint), or tiny:<size> "
                         "(default: the config's model; none: the embedded default's demo/models/draft)")
    ap.add_argument("--train-data", help="data file (JSONL of id, image, question, answer; docs/routing.md), or "
                    "synthetic:<n> (default: the config's train_data)")
    ap.add_argument("--acc-tgt-cache", help="JRL labels / presample output (JSONL id -> acc) "
                    "(default: the config's, else presampled into the output folder)")
    ap.add_argument("--target-model", help="presample target: dir, tiny:<size> or openai:<model> "
                    "(default: the config's target_model)")
    ap.add_argument("--report-to", help="comma-separated: tensorboard, wandb (curves of the logged metrics; "
                    "default: none)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    ap.add_argument("--resume-weights-only", action="store_true",
                    help="--resume from a checkpoint without its training state: weights, step and schedule, "
                         "fresh optimizer")
    lo = ap.add_argument_group("LoRA (App. D: train an adapter, not every weight; config: a lora: block)")
    lo.add_argument("--lora-rank", type=int, help="adapter rank r (0: full fine-tuning; default 0, or the config's)")
    lo.add_argument("--lora-alpha", type=float, help="scale alpha: the update is (alpha / r) B A (default 32)")
    lo.add_argument("--lora-dropout", type=float, help="dropout on the adapter's input (default 0)")
    lo.add_argument("--lora-target-modules", help="comma-separated module names in the language model "
                    "(default q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    lo.add_argument("--lora-vision", action="store_true", help="also adapt the vision tower (frozen by default)")
    ap.add_argument("--deepspeed", action="store_true", help="use DeepSpeed (implied under the deepspeed launcher)")
    ap.add_argument("--deepspeed-config", help="DeepSpeed JSON (default configs/ds_zero3.json)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable; "
                    "every field and its default: prp/train/config.py, docs/training.md)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of a user error")
    return ap


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)

    overrides: dict = {}
    config = args.config
    main_rank = int(os.environ.get("RANK", "0")) == 0
    recipe, inherited = (_repo_relative(config) if config else ""), None
    if config is None and args.model is None:
        config, overrides, line = embedded_default(args.mode or "drl", max_steps=args.max_steps)
        recipe = _repo_relative(config)
        if main_rank:
            print(line, flush=True)
    elif config is None:  # a model without a config: the recipe its prp.json records (prp.core.recipe)
        inherited = model_recipe(args.model)
        if inherited is not None:
            overrides.update(inherited.get("train") or {})
            recipe = inherited.get("recipe") or ""
    overrides.update(parse_set(args.set))
    if args.resume_weights_only:
        overrides["resume_weights_only"] = True
    if args.lora_vision:
        overrides["lora_vision"] = True
    for key in ("output_dir", "max_steps", "model", "train_data", "acc_tgt_cache", "target_model",
                "deepspeed_config", "report_to", "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    cfg = materialise_specs(load_config(config, mode=args.mode, overrides=overrides))
    if args.config is None and args.model is not None and main_rank:
        print(settings_line(cfg, args.model, inherited), flush=True)
    from prp.train.logs import check_reporters

    check_reporters(cfg.reporters)  # a missing package stops here, before any model is loaded
    use_ds = args.deepspeed or "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1

    from prp.train.loop import train

    return train(cfg, resume=args.resume or cfg.resume_weights_only, use_deepspeed=use_ds, recipe=recipe)


def _repo_relative(path) -> str:
    """A config path as the repository names it (configs/demo/drl.yaml), else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def model_recipe(model: str) -> dict | None:
    """The prp.json of `--model` as training resolves it (a run folder's latest ckpt-N, a model or LoRA
    adapter folder: prp.train.policy.resolve_model), or None."""
    from prp.core.recipe import read_settings
    from prp.train.policy import resolve_model

    try:
        path = resolve_model(model)
    except ConfigError:
        return None  # not a model: resolve_model says so again when the run starts
    try:
        return read_settings(path)
    except ValueError as exc:
        raise ConfigError(f"--model {model}: {exc}") from None


# the values that decide what one step costs: named whenever the run starts from the built-in defaults
KEY_FIELDS = ("max_completion_length", "gradient_accumulation_steps", "per_device_batch_size", "num_generations",
              "learning_rate")


def settings_line(cfg: TrainConfig, model: str, inherited: dict | None) -> str:
    """One line saying which settings a `--model` run without `--config` uses: its prp.json's recipe, or the
    built-in defaults (the paper's full scale), so a tiny model never silently gets 2048-token completions."""
    from prp.core.recipe import FILE, recipe_values

    defaults = TrainConfig().to_dict()
    now = cfg.to_dict()
    if inherited is None:
        shown = ", ".join(f"{k} {now[k]}" for k in KEY_FIELDS)
        return (f"train.py: {model} has no {FILE} and no --config was given: the built-in defaults, the paper's "
                f"full scale ({shown}); --config FILE (e.g. configs/tiny.yaml) or --set KEY=VALUE for others")
    changed = recipe_values(now, defaults)
    shown = ", ".join(f"{k} {v} (default {defaults[k]})" for k, v in changed.items()) or "the built-in defaults"
    source = f"{Path(model) / FILE}" + (f", recipe {inherited['recipe']}" if inherited.get("recipe") else "")
    return f"train.py: settings from {source}: {shown}; --config FILE or --set KEY=VALUE for others"


def cli() -> int:
    """`prp-train` and `python train.py`: a ConfigError is one line on stderr, exit status 2 (prog: argv[0])."""
    from prp.core.cli import run_main

    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
