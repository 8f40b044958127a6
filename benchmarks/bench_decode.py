"""Decode-engine benchmark (issue 14's table), random init, no download.

    python benchmarks/bench_decode.py                 # 3B text shape on the GPU (bf16)
    python benchmarks/bench_decode.py --size draft    # the same measurements, tiny model, CPU

Rows: decode tok/s of the eager loop, the compiled engine, HF `generate` (dynamic cache) and HF
`generate` with `cache_implementation="static"`, at each batch size; the routing decision (rating
prefix) as a fraction of the full generation at two lengths; a kept query (prefix, then continue
from the cache) over a plain generation of the same length; a GRPO step proxy (N = 4 rollouts +
one loss backward + optimizer step) with each rollout engine.  EOS is suppressed so every row
decodes the full length.  Prints a Markdown table, writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prp.core.modeling import digit_token_ids, prepare_inputs
from prp.core.prompts import build_messages
from prp.route import decode as gen
from prp.route.engine import set_engine
from prp.toy.synthetic import render
from prp.toy.tiny import build_processor, build_tiny_model, build_tokenizer

SHAPE_3B = {"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
            "intermediate_size": 11008}


def build(size: str, device: str, dtype: torch.dtype):
    """(model, processor): a tiny size from prp.toy.tiny, or "3b" = its draft with the 3B text shape."""
    tok = build_tokenizer()
    overrides = dict(SHAPE_3B, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                "mrope_section": [16, 24, 24]}) if size == "3b" else {}
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_tiny_model("draft" if size == "3b" else size, tokenizer=tok, **overrides)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config._attn_implementation = "sdpa"
    return model.eval(), build_processor(tokenizer=tok)


def batch_inputs(processor, batch: int, prompt_tokens: int, device: str):
    """`batch` copies of one prompt with one image, padded with text to about `prompt_tokens`."""
    filler = " ".join(["the numbers"] * max(1, prompt_tokens // 3))
    msgs = [build_messages(f"{filler} What is the sum of the numbers in the image?", mode="drl")] * batch
    return prepare_inputs(processor, msgs, [render([3, 14, 27])] * batch, device=device)


def timed(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="3b", help="3b (GPU) or a tiny size: test, draft, target")
    ap.add_argument("--batches", default=None, help="comma-separated (default 1,16,64; tiny: 1,4)")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode length (default 256; tiny: 32)")
    ap.add_argument("--long", default=None, help="two lengths for the decision ratio (default 256,1024; tiny 32,96)")
    ap.add_argument("--prompt-tokens", type=int, default=224)
    ap.add_argument("--engine", default=None, help="compiled engine kind (default compiled; CPU: static)")
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: hf_static,train")
    ap.add_argument("--hf-static-batches", default=None, help="batches for HF static (default: all; each compiles)")
    ap.add_argument("--save-model", default=None, help="write the benchmark's model + processor to DIR and exit")
    ap.add_argument("--out", default="bench_decode.json")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(1)  # tiny matmuls: OpenMP spin-waits on a shared 2-core box cost ~30x
    tiny = args.size != "3b"
    batches = [int(b) for b in (args.batches or ("1,4" if tiny else "1,16,64")).split(",")]
    n_new = args.new_tokens or (32 if tiny else 256)
    longs = [int(x) for x in (args.long or ("32,96" if tiny else "256,1024")).split(",")]
    prompt_tokens = args.prompt_tokens if not tiny else min(args.prompt_tokens, 64)
    fast_kind = args.engine or ("compiled" if cuda else "static")
    skip = set(filter(None, args.skip.split(",")))
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    model, proc = build(args.size, device, dtype)
    tok = proc.tokenizer
    if args.save_model:  # e.g. the 3B-shape draft for scripts/gpu_check.sh's training run
        model.save_pretrained(args.save_model, safe_serialization=True)
        proc.save_pretrained(args.save_model)
        return 0
    static_batches = set(batches) if args.hf_static_batches is None else \
        {int(b) for b in args.hf_static_batches.split(",")}
    no_eos = sorted(gen.eos_ids_of(model, tok))
    results: dict = {"size": args.size, "device": torch.cuda.get_device_name() if cuda else "cpu",
                     "dtype": str(dtype), "new_tokens": n_new, "rows": []}
    rows = results["rows"]

    def add(name, batch, value, unit):
        rows.append({"row": name, "batch": batch, "value": value, "unit": unit})
        print(f"  {name} b={batch}: {value:.4g} {unit}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))  # a run cut short keeps its rows

    # ---- decode throughput
    for b in batches:
        inputs = batch_inputs(proc, b, prompt_tokens, device)
        tokens = {}
        for kind in ("eager", fast_kind):
            set_engine(model, kind)
            def run(kind=kind, inputs=inputs, tokens=tokens):
                tokens[kind] = gen.generate(model, tok, inputs, max_new_tokens=n_new, suppress=no_eos)
            if kind != "eager":
                timed(run, sync)  # compile / warm the bucket
            add(f"engine {kind}", b, b * n_new / timed(run, sync), "tok/s")
        # greedy agreement with the eager loop: exact in fp32; bf16 may drift after a near-tie
        same = [next((i for i, (x, y) in enumerate(zip(r, q, strict=False)) if x != y), len(r))
                for r, q in zip(tokens["eager"], tokens[fast_kind], strict=True)]
        add(f"tokens equal to the eager loop before the first difference ({fast_kind})", b, min(same), "tokens")
        set_engine(model, "eager")
        for impl in ("dynamic", "static"):
            if impl == "static" and ("hf_static" in skip or b not in static_batches):
                continue
            extra = {"cache_implementation": "static"} if impl == "static" else {}
            def run(inputs=inputs, extra=extra):
                model.generate(**inputs, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                               pad_token_id=tok.pad_token_id, **extra)
            try:
                if impl == "static":
                    timed(run, sync)  # transformers compiles the static forward on its first call
                add(f"HF generate {impl}", b, b * n_new / timed(run, sync), "tok/s")
            except Exception as e:  # a baseline that fails is reported, not fatal
                print(f"  HF generate {impl} b={b}: failed: {e}", flush=True)

    # ---- the routing decision, and a kept query, batch 1 (fast engine)
    set_engine(model, fast_kind)
    inputs = batch_inputs(proc, 1, prompt_tokens, device)
    digits = digit_token_ids(tok)
    forced = gen.rating_template(tok, "drl")

    def prefix():
        return gen.generate_prefix(model, tok, inputs, digit_ids=digits, forced=forced)

    timed(prefix, sync)
    t_prefix = timed(prefix, sync)
    add("decision (rating prefix)", 1, t_prefix, "s")
    for n in longs:
        def kept(n=n):
            p = prefix()
            gen.continue_rows(model, tok, gen.select_rows(p.state, [0]), max_new_tokens=n, suppress=no_eos)

        def plain(n=n):
            gen.generate(model, tok, inputs, max_new_tokens=len(forced) + n, suppress=no_eos)

        timed(kept, sync)
        timed(plain, sync)
        t_kept, t_plain = timed(kept, sync), timed(plain, sync)
        add(f"decision / full generation, {n} new", 1, t_prefix / t_kept, "ratio")
        add(f"kept / plain, {n} new", 1, t_kept / t_plain, "ratio")

    # ---- a GRPO step proxy with each rollout engine
    if "train" not in skip:
        from prp.core.batches import build_batch, build_prompts, completion_logprobs
        from prp.train.rollout import generate_rollout

        policy, _ = build(args.size, device, torch.float32)  # fp32 master weights, as in training
        policy.generation_config.eos_token_id = []
        opt = torch.optim.SGD(policy.parameters(), lr=1e-6)
        msgs = [build_messages("What is the sum of the numbers in the image?", mode="drl")]
        prompts = build_prompts(proc, msgs, [render([3, 14])], repeat=4, device=device)
        for engine in ("hf", "engine"):
            def train_step(engine=engine):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda and engine == "hf"):
                    ro = generate_rollout(policy, proc, prompts, max_new_tokens=n_new, temperature=1.0, top_p=1.0,
                                          seed=0, suppress=no_eos, engine=engine)
                batch = build_batch(prompts, ro.completions, pad_id=tok.pad_token_id)
                policy.train()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                    loss = -completion_logprobs(policy, batch).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                policy.eval()

            timed(train_step, sync)
            add(f"GRPO step N=4 (rollout {engine})", 4, timed(train_step, sync), "s")

    print()
    print(markdown(results))
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def markdown(results: dict) -> str:
    title = (f"Decode benchmark: {results['size']} on {results['device']} ({results['dtype']}), "
             f"{results['new_tokens']} new tokens")
    lines = [title, "", "| measurement | batch | value | unit |", "|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['batch']} | {r['value']:.4g} | {r['unit']} |" for r in results["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
