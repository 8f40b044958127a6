"""LoRA and swift JRL (the paper's App. D) on the embedded demo, and the memory arithmetic at the 7B / 3B shapes.

    python benchmarks/bench_lora.py --memory-only               # the 7B / 3B / demo table, computed (seconds)
    python benchmarks/bench_lora.py --steps 100 --work runs/bench-lora --write-tables demo/README.md

Memory (computed, not guessed): each shape's Qwen2.5-VL model is built on the meta device from its config
(the published config.json values of Qwen2.5-VL-7B / -3B-Instruct below; the demo draft's own config.json),
its parameters counted, and the LoRA parameters counted on the same model with configs/lora.yaml's block
(prp.train.lora.target_module_names, the function train.py uses).  The trainer keeps fp32 weights
(prp.train.policy) and AdamW, so: weights 4 B per parameter, gradients 4 B and optimizer state 8 B (m, v) per
trainable parameter.  Under ZeRO-3 each of the three is split over the processes; the sums are per model.

Demo (measured): from the shipped GRPO draft (demo/models/draft) on freshly generated synthetic training data,
`--steps` optimizer steps of each run (the demo's own recipes run 300 DRL / 600 JRL steps; this is a step
budget, said in every row): LoRA-DRL (configs/app-d/demo-lora-drl.yaml), LoRA-JRL (configs/app-d/demo-lora-jrl.yaml)
and swift JRL, full fine-tuning from the shipped DRL model (configs/app-d/demo-jrl-swift.yaml); JRL's Acc_tgt
is presampled with the shipped target on `--n-jrl` records.  Each model, and the shipped full DRL and JRL
models, is evaluated by benchmarks/reproduce_demo.py's code on the demo test split: routing AUC of the
router's score (s with IPR), Spearman of rank(d) and correctness, d's std and |mean d - draft accuracy|.
Train time is each train.py process's wall and CPU time (one torch thread); max RSS is the process's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
PY = sys.executable

# config.json of Qwen2.5-VL-7B-Instruct and -3B-Instruct (Hugging Face), the fields that set parameter shapes
VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "window_size": 112,
          "fullatt_block_indexes": [7, 15, 23, 31]}
SHAPES = {
    "Qwen2.5-VL-7B": {"text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                               "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
                      "vision": {**VISION, "out_hidden_size": 3584}, "tie_word_embeddings": False},
    "Qwen2.5-VL-3B": {"text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
                               "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2},
                      "vision": {**VISION, "out_hidden_size": 2048}, "tie_word_embeddings": True},
}
GiB = 1024 ** 3


def count_shape(config, lora_cfg) -> dict:
    """Total and LoRA parameters of a Qwen2.5-VL model built from `config` on the meta device (no memory)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from prp.train.lora import target_module_names

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    r = lora_cfg.lora_rank
    names = target_module_names(model, lora_cfg)
    modules = dict(model.named_modules())
    lora = sum(r * (modules[n].in_features + modules[n].out_features) for n in names)  # A [r, in] + B [out, r]
    return {"total": total, "lora": lora, "lora_modules": len(names)}


def state_bytes(total: int, trainable: int) -> dict:
    """fp32 weights of every parameter; fp32 gradients and AdamW's m and v of the trainable ones."""
    return {"weights": 4 * total, "grads": 4 * trainable, "optimizer": 8 * trainable,
            "sum": 4 * total + 12 * trainable}


def memory_rows() -> list[dict]:
    from transformers import Qwen2_5_VLConfig

    from prp.train.config import load_config

    paper = load_config(ROOT / "configs" / "lora.yaml", mode="drl")  # the 7B / 3B rows: the paper's LoRA block
    demo = load_config(ROOT / "configs" / "app-d" / "demo-lora-drl.yaml", overrides={"model": "m", "train_data": "d"})
    configs = {name: (Qwen2_5_VLConfig(text_config=s["text"], vision_config=s["vision"],
                                       tie_word_embeddings=s["tie_word_embeddings"]), paper)
               for name, s in SHAPES.items()}
    configs["demo draft"] = (Qwen2_5_VLConfig.from_pretrained(ROOT / "demo" / "models" / "draft"), demo)
    rows = []
    for name, (config, lora_cfg) in configs.items():
        c = count_shape(config, lora_cfg)
        full, lora = state_bytes(c["total"], c["total"]), state_bytes(c["total"], c["lora"])
        rows.append({"shape": name, "params": c["total"], "lora_params": c["lora"], "lora_modules": c["lora_modules"],
                     "rank": lora_cfg.lora_rank, "full": full, "lora": lora,
                     "trainable_share": c["lora"] / c["total"],
                     "grads_optimizer_share": (lora["grads"] + lora["optimizer"])
                     / (full["grads"] + full["optimizer"])})
    return rows


def memory_table(rows) -> str:
    def gib(x):
        return f"{x / GiB:.2f} GiB" if x >= GiB / 100 else f"{x / 2**20:.2f} MiB"

    lines = ["| shape | parameters | LoRA r | LoRA parameters (share) | full: weights + grads + AdamW | "
             "LoRA: weights + grads + AdamW | LoRA grads + AdamW vs full |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f, lo = r["full"], r["lora"]
        lines.append(f"| {r['shape']} | {r['params']:,} | {r['rank']} | {r['lora_params']:,} "
                     f"({100 * r['trainable_share']:.2f}%) | {gib(f['weights'])} + {gib(f['grads'])} + "
                     f"{gib(f['optimizer'])} = {gib(f['sum'])} | {gib(lo['weights'])} + {gib(lo['grads'])} + "
                     f"{gib(lo['optimizer'])} = {gib(lo['sum'])} | {100 * r['grads_optimizer_share']:.2f}% |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the demo runs


def run(cmd: list[str], log: Path) -> dict:
    """A train.py process; its wall time, CPU time (user + system) and max RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {rc}); see {log}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "max_rss_mib": after.ru_maxrss / 1024}


def train_run(name: str, config: str, model: str, data: Path, work: Path, steps: int, extra=()) -> dict:
    from prp.train.checkpoint import latest_checkpoint

    out = work / f"{name}-{steps}"  # one folder per run and step budget
    final = out / f"ckpt-{steps}"
    timing_file = out / "bench_timing.json"
    if final.exists() and timing_file.exists():  # rerun of the script: keep the measured run
        return {**json.loads(timing_file.read_text()), "ckpt": str(final)}
    cmd = [PY, "train.py", "--config", config, "--model", model, "--train-data", str(data), "--output-dir", str(out),
           "--max-steps", str(steps), "--set", f"save_every={steps}",
           "--set", f"warmup_ratio={min(0.5, 20 / steps):.4f}", *extra]  # the stages' 20 warm-up steps
    (work / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[bench_lora] {name}: {' '.join(cmd[1:])}", flush=True)
    timing = run(cmd, work / "logs" / f"{name}.log")
    timing_file.write_text(json.dumps(timing) + "\n")
    assert latest_checkpoint(out) == final, f"{name}: no {final}"
    return {**timing, "ckpt": str(final)}


def trainable(ckpt: str) -> dict:
    """Trainable and total parameters of a run's model: an adapter's A/B, or every weight."""
    from safetensors import safe_open

    from prp.core.adapters import ADAPTER_WEIGHTS, adapter_base, is_adapter_dir

    def count(folder: Path, pattern: str) -> int:
        n = 0
        for f in folder.glob(pattern):
            with safe_open(str(f), framework="pt") as st:
                n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
        return n

    if is_adapter_dir(ckpt):
        total = count(Path(adapter_base(ckpt)), "*.safetensors")
        return {"trainable": count(Path(ckpt), ADAPTER_WEIGHTS), "total": total}
    total = count(Path(ckpt), "*.safetensors")
    return {"trainable": total, "total": total}


def evaluate(model_dir: str, mode: str, records, target_rows, kw) -> dict:
    import numpy as np
    import reproduce_demo as R

    t0 = time.perf_counter()
    rows = R.run_rating_draft(Path(model_dir), mode, records, **kw)
    signals = {R.ROUTER_SIGNAL: "score", "d": "d"} | ({"t": "t"} if mode == "jrl" else {})
    res = R.analyse(rows, target_rows, signals)
    d = np.array([math.nan if r["d"] is None else r["d"] for r in rows], dtype=float)
    return {"auc": res[R.ROUTER_SIGNAL]["auc"], "spearman_d": res["d"]["spearman_rank_acc"],
            "d_std": res["d_stats"]["std"], "d_mean": res["d_stats"]["mean"], "draft_acc": res["draft_acc"],
            "calibration": abs(float(np.nanmean(d)) - res["draft_acc"]), "missing_d": res["d_stats"]["missing"],
            "t_spearman_target": res.get("t", {}).get("spearman_rank_target_acc"), "eval_s": time.perf_counter() - t0}


def demo_rows(args) -> dict:
    import torch

    from prp.core.data import load_jsonl
    from prp.toy.synthetic import build_benchmark

    torch.set_num_threads(args.threads)
    work = (ROOT / args.work).resolve()
    demo = ROOT / "demo"
    data = work / "data"
    if not (data / "train.jsonl").exists():
        build_benchmark(data, seed=args.seed, sizes={"train": args.n_train})
    jrl_data = data / "train_jrl.jsonl"
    if not jrl_data.exists():
        lines = (data / "train.jsonl").read_text().splitlines()[: args.n_jrl]
        jrl_data.write_text("".join(x + "\n" for x in lines))
    cache = work / "acc_tgt.jsonl"
    timings: dict = {}
    if not cache.exists() or len(cache.read_text().splitlines()) < args.n_jrl:
        print(f"[bench_lora] presample Acc_tgt of {args.n_jrl} records with demo/models/target", flush=True)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        timings["presample"] = run([PY, "train.py", "--config", "configs/demo/presample.yaml", "--train-data",
                                    str(jrl_data), "--target-model", str(demo / "models" / "target"),
                                    "--acc-tgt-cache", str(cache), "--output-dir", str(work / "presample")],
                                   work / "logs" / "presample.log")
    jrl_extra = ["--acc-tgt-cache", str(cache)]
    runs = {
        "lora-drl": ("drl", "configs/app-d/demo-lora-drl.yaml", demo / "models" / "draft", data / "train.jsonl", ()),
        "lora-jrl": ("jrl", "configs/app-d/demo-lora-jrl.yaml", demo / "models" / "draft", jrl_data, jrl_extra),
        "swift-jrl": ("jrl", "configs/app-d/demo-jrl-swift.yaml", demo / "models" / "drl", jrl_data, jrl_extra),
        "jrl-from-grpo": ("jrl", "configs/demo/jrl.yaml", demo / "models" / "draft", jrl_data, jrl_extra),
    }
    chosen = [x.strip() for x in args.runs.split(",") if x.strip()]
    trained = {}
    for name in chosen:
        mode, config, model, train_data, extra = runs[name]
        trained[name] = {"mode": mode, **train_run(name, config, str(model), train_data, work, args.steps, extra)}
        print(f"[bench_lora] {name}: {trained[name]}", flush=True)
    records = load_jsonl(demo / "data" / f"{args.split}.jsonl", check_images=False).records
    records = records[: args.limit] if args.limit else records
    kw = {"batch_size": args.batch_size, "max_new": args.max_new_tokens}
    import reproduce_demo as R

    target_rows = R.run_plain(demo / "models" / "target", records, **kw)
    models = {"full DRL (shipped, 300 steps)": ("drl", str(demo / "models" / "drl"), None),
              "full JRL (shipped, 600 steps)": ("jrl", str(demo / "models" / "jrl"), None)}
    labels = {"lora-drl": "LoRA-DRL", "lora-jrl": "LoRA-JRL", "swift-jrl": "swift JRL (full, from DRL)",
              "jrl-from-grpo": "full JRL from GRPO"}
    for name, t in trained.items():
        models[f"{labels[name]} ({args.steps} steps)"] = (t["mode"], t["ckpt"], t)
    out = {}
    for label, (mode, path, timing) in models.items():
        res = evaluate(path, mode, records, target_rows, kw)
        res |= trainable(path)
        if timing is not None:
            res |= {k: timing[k] for k in ("wall_s", "cpu_s", "max_rss_mib")}
            res["state_mib"] = state_bytes(res["total"], res["trainable"])["sum"] / 2**20
        out[label] = res
        print(f"[bench_lora] {label}: {res}", flush=True)
    return {"n": len(records), "split": args.split, "steps": args.steps, "n_train": args.n_train,
            "n_jrl": args.n_jrl, "timings": timings, "models": out}


def demo_table(res: dict) -> str:
    lines = ["| model | routing AUC | Spearman rank(d) vs correct (negative = good) | d std | abs(mean d - acc) | "
             "draft acc | JRL t: Spearman vs target correct (negative = good) | trainable params | "
             "weights + grads + AdamW | train wall / CPU | max RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in res["models"].items():
        timing = (f"{r['wall_s'] / 60:.1f} / {r['cpu_s'] / 60:.1f} min" if "wall_s" in r else "(the demo build)")
        state = f"{r['state_mib']:.1f} MiB" if "state_mib" in r else \
            f"{state_bytes(r['total'], r['trainable'])['sum'] / 2**20:.1f} MiB"
        rss = f"{r['max_rss_mib']:.0f} MiB" if "max_rss_mib" in r else ""
        lines.append(f"| {label} | {r['auc']:.1f} | {r['spearman_d']:+.3f} | {r['d_std']:.3f} | "
                     f"{r['calibration']:.3f} | {100 * r['draft_acc']:.1f}% | "
                     f"{'' if r.get('t_spearman_target') is None else format(r['t_spearman_target'], '+.3f')} | "
                     f"{r['trainable']:,} of {r['total']:,} | "
                     f"{state} | {timing} | {rss} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-only", action="store_true", help="only the computed memory table (no training)")
    ap.add_argument("--work", default="runs/bench-lora")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of every run (the step budget)")
    ap.add_argument("--runs", default="lora-drl,lora-jrl,swift-jrl",
                    help="comma-separated: lora-drl, lora-jrl, swift-jrl, jrl-from-grpo (full JRL at --steps)")
    ap.add_argument("--n-train", type=int, default=2000, help="generated training records (DRL)")
    ap.add_argument("--n-jrl", type=int, default=200, help="of them, presampled for JRL")
    ap.add_argument("--seed", type=int, default=7, help="training data seed (not the demo build's 0)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results JSON (default <work>/results.json)")
    ap.add_argument("--from-results", nargs="+", metavar="JSON", help="measure nothing: the tables of these "
                    "results files (their demo rows merged, e.g. two invocations with different --runs)")
    args = ap.parse_args(argv)
    if args.from_results:
        loaded = [json.loads(Path(f).read_text()) for f in args.from_results]
        print(memory_table(loaded[0]["memory"]))
        demos = [x["demo"] for x in loaded if "demo" in x]
        if demos:
            print(demo_table({**demos[0], "models": {k: v for d in demos for k, v in d["models"].items()}}))
        return
    rows = memory_rows()
    print(memory_table(rows))
    res = {"memory": rows}
    if not args.memory_only:
        res["demo"] = demo_rows(args)
        print(demo_table(res["demo"]))
    out = Path(args.out) if args.out else ROOT / args.work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"[bench_lora] wrote {out}")


if __name__ == "__main__":
    main()
