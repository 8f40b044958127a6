"""Training throughput: PRP's loop (grpo mode) vs TRL's GRPOTrainer, same tiny Qwen2.5-VL, same settings.

    pip install trl            # benchmark only; never a runtime dependency of prp
    python benchmarks/bench_train_vs_trl.py --steps 12 --warmup 2

Both sides: the same saved tiny model (random init, `tiny:<size>`), the same synthetic records and
prompt (P_TARGET + image), N completions per prompt, the same completion budget, batch of
`batch` completions per optimizer step (no accumulation), lr, temperature 1, no KL (beta 0, as in the
paper), one update per rollout, format + accuracy rewards, 1 torch thread, fp32, CPU.  Image
placeholder tokens are suppressed in both samplers (a random model otherwise emits them and the
training forward rejects them).  Throughput = completions trained per second, median over the
timed steps (the first `warmup` are dropped); p20/p80 shown too.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _q(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name"))
    except Exception:
        cpu = platform.processor() or "unknown CPU"
    import torch
    import transformers

    return (f"{cpu}, {__import__('os').cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), transformers {transformers.__version__}, "
            f"Python {platform.python_version()}")


def bench_prp(model_dir: Path, data: Path, out: Path, args) -> list[float]:
    from prp.train.config import load_config
    from prp.train.loop import train

    cfg = load_config(overrides={
        "mode": "grpo", "model": str(model_dir), "train_data": str(data), "output_dir": str(out),
        "num_generations": args.n, "per_device_batch_size": args.batch, "gradient_accumulation_steps": 1,
        "max_completion_length": args.max_completion, "learning_rate": args.lr, "lr_scheduler": "constant",
        "max_steps": args.steps, "save_every": 10**9, "sample_every": 0, "num_threads": 1, "seed": 0,
        "overlong_cache_length": 0, "max_pixels": 50176,
    })
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in rows][args.warmup:]


def bench_trl(model_dir: Path, data: Path, out: Path, args) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prp.core.data import load_jsonl
    from prp.core.modeling import load_processor
    from prp.core.parsing import parse_completion
    from prp.core.prompts import P_TARGET
    from prp.train.rewards import accuracy_reward, format_reward
    from prp.train.rollout import vision_token_ids

    torch.set_num_threads(1)
    records = load_jsonl(data).records
    ds = Dataset.from_list([{
        "prompt": [{"role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": f"{P_TARGET}\n{r.question}"}]}],
        "image": r.load_image(), "answer": r.answer,
    } for r in records])

    def _text(c):
        return c if isinstance(c, str) else c[0]["content"]

    def fmt(completions, **kw):
        return [format_reward(_text(c), "grpo") for c in completions]

    def acc(completions, answer, **kw):
        return [accuracy_reward(parse_completion(_text(c), "grpo").answer, a) or 0.0
                for c, a in zip(completions, answer, strict=True)]

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = load_processor(model_dir)
    processor.image_processor.size = {**dict(processor.image_processor.size), "longest_edge": 50176}
    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch, num_generations=args.n,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, beta=0.0,
        max_completion_length=args.max_completion, learning_rate=args.lr, lr_scheduler_type="constant",
        max_steps=args.steps, temperature=1.0, top_k=0, top_p=1.0, use_cpu=True, bf16=False,
        logging_steps=1, report_to=[], save_strategy="no", dataloader_num_workers=0, seed=0,
        generation_kwargs={"suppress_tokens": vision_token_ids(model)},
    )
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=model, reward_funcs=[fmt, acc], args=cfg, train_dataset=ds,
                          processing_class=processor, callbacks=[Timer()])
    trainer.train()
    return times[args.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--n", type=int, default=4, help="completions per prompt (N)")
    ap.add_argument("--batch", type=int, default=8, help="completions per optimizer step")
    ap.add_argument("--max-completion", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", default="draft", help="tiny model size (draft: 0.74 M params)")
    ap.add_argument("--records", type=int, default=64)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from prp.toy.synthetic import build_benchmark
    from prp.toy.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_tiny_model(tmp / "model", size=args.size, seed=0)
        data = build_benchmark(tmp / "data", seed=0, sizes={"train": args.records})["train"]
        results = {}
        for name, fn in (("prp", bench_prp), ("trl", bench_trl)):
            try:
                times = fn(model_dir, data, tmp / f"out-{name}", args)
                results[name] = times
            except Exception as exc:  # report precisely why a side could not run
                import traceback

                traceback.print_exc()
                results[name] = f"{type(exc).__name__}: {exc}"
        print(f"\nmachine: {machine()}")
        print(f"setup: tiny-{args.size}, N={args.n}, {args.batch} completions/step, "
              f"max_completion={args.max_completion}, "
              f"{args.steps} steps ({args.warmup} warm-up dropped)")
        rates = {}
        for name, times in results.items():
            if isinstance(times, str):
                print(f"{name}: FAILED - {times}")
                continue
            med = statistics.median(times)
            rates[name] = args.batch / med
            print(f"{name}: {rates[name]:.2f} samples/s (median step {med * 1000:.0f} ms, "
                  f"p20 {_q(times, 0.2) * 1000:.0f} ms, p80 {_q(times, 0.8) * 1000:.0f} ms, {len(times)} steps)")
        if len(rates) == 2:
            print(f"ratio prp/trl: {rates['prp'] / rates['trl']:.2f}x")


if __name__ == "__main__":
    main()
