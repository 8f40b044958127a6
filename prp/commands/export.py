"""Export a LoRA adapter as a merged model folder: base + adapter folded into one set of weights.

    python -m prp.commands.export runs/drl-lora/ckpt-300 --out runs/drl-lora-merged
    python -m prp.commands.export runs/drl-lora --out DIR --base-model /models/Qwen2.5-VL-7B-Instruct
    prp-export ADAPTER --out DIR

ADAPTER is an adapter folder (adapter_config.json names its base; --base-model overrides) or a LoRA
training run (its latest checkpoint).  The folder written (config.json, model.safetensors, the adapter's
processor) is a plain model folder: train.py --model, route.py --draft, eval.py --draft and
`python -m prp.serve --model` load it like any other.  It is written into DIR.tmp and renamed, so DIR is
complete or absent; an existing DIR is refused.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from prp.core.cli import UserError


def resolve_adapter(spec: str) -> Path:
    from prp.core.adapters import is_adapter_dir
    from prp.train.checkpoint import latest_checkpoint

    path = Path(spec)
    if is_adapter_dir(path):
        return path
    latest = latest_checkpoint(path)
    if latest is not None and is_adapter_dir(latest):
        return latest
    raise UserError(f"{spec} is not a LoRA adapter folder (adapter_config.json) nor a LoRA training run; "
                    "give a checkpoint of a run trained with a lora: block")


def export_merged(adapter: str | Path, out: str | Path, *, base_model: str | None = None) -> Path:
    """Write base + `adapter`, merged, as a model folder at `out` (atomically); returns `out`."""
    import torch

    from prp.core.modeling import load_model

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} exists; choose a new --out folder (an export never overwrites)")
    model, processor = load_model(adapter, dtype=torch.float32, base_model=base_model, merge=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="export", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", help="LoRA adapter folder, or a LoRA training run (its latest checkpoint)")
    ap.add_argument("--out", required=True, help="the merged model folder to write (must not exist)")
    ap.add_argument("--base-model", help="base model folder (default: the one adapter_config.json names)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of a user error")
    args = ap.parse_args(argv)
    out = export_merged(resolve_adapter(args.adapter), args.out, base_model=args.base_model)
    print(f"export: wrote {out} (base + {args.adapter}, merged)")
    return out


def cli() -> int:
    from prp.core.cli import run_main

    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
