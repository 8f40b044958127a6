"""Train the PRP draft model: GRPO, DRL (Alg. 1), JRL (Alg. 2), SFT warm start, [CN]/[UN] baseline, presampling.

    python train.py --mode drl --config configs/tiny.yaml --max-steps 2 --output-dir runs/drl
    deepspeed --num_gpus 2 train.py --mode jrl --config configs/tiny.yaml --output-dir runs/jrl   # ZeRO-3
    python train.py --mode drl --config configs/drl.yaml --output-dir runs/drl --resume

Modes:
  grpo      format + accuracy rewards only (Eq. 1-2), plain target-style prompt
  drl       Draft Rating Learning: <confidence>d</confidence> before thinking (Alg. 1, Eq. 3-7, DSS)
  jrl       Joint Rating Learning: <target>t</target><confidence>d</confidence> (Alg. 2, Eq. 8); needs
            Acc_tgt: from --acc-tgt-cache, else presampled with target_model first
  sft       supervised warm start on reference traces <think>reasoning</think><answer>answer</answer>
  sft-cn    Paradigm-2 baseline: sample N, append [CN]/[UN], fine-tune (Sec. 2.1)
  presample sample the target M times per record -> Acc_tgt cache (Alg. 2 l.1-7), resumable
"""
from __future__ import annotations

import argparse
import os

from prp.train.config import MODES, load_config, parse_set


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, help="training mode (overrides the config's)")
    ap.add_argument("--config", help="YAML config (configs/*.yaml)")
    ap.add_argument("--output-dir", help="checkpoints, metrics.jsonl, samples.jsonl")
    ap.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    ap.add_argument("--model", help="draft model dir, or tiny:<size>")
    ap.add_argument("--train-data", help="data file, or synthetic:<n>")
    ap.add_argument("--acc-tgt-cache", help="JRL labels / presample output (JSONL id -> acc)")
    ap.add_argument("--target-model", help="presample target: dir, tiny:<size> or openai:<model>")
    ap.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    ap.add_argument("--deepspeed", action="store_true", help="use DeepSpeed (implied under the deepspeed launcher)")
    ap.add_argument("--deepspeed-config", help="DeepSpeed JSON (default configs/ds_zero3.json)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    args = ap.parse_args(argv)

    overrides = parse_set(args.set)
    for flag, key in (("output_dir", "output_dir"), ("max_steps", "max_steps"), ("model", "model"),
                      ("train_data", "train_data"), ("acc_tgt_cache", "acc_tgt_cache"),
                      ("target_model", "target_model"), ("deepspeed_config", "deepspeed_config")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    cfg = load_config(args.config, mode=args.mode, overrides=overrides)
    use_ds = args.deepspeed or "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1

    from prp.train.trainer import train

    return train(cfg, resume=args.resume, use_deepspeed=use_ds)


if __name__ == "__main__":
    main()
