"""The static decode engine equals the eager loop token for token (greedy), and compiles a bounded
number of graphs.  Fast tests run the static cache without compiling (the same code the compiled
step traces) or under dynamo's "eager" backend; the real inductor compile is marked slow."""
from __future__ import annotations

import pytest
import torch

from prp.core.modeling import digit_token_ids, load_model, prepare_inputs
from prp.core.prompts import build_messages
from prp.route import decode as gen
from prp.route.engine import batch_bucket, engine_for, length_bucket, set_engine
from prp.toy.synthetic import render

QUESTIONS = ["What is the sum of the numbers in the image?", "How many?",
             "What is the largest number in the image? Give the final answer.", "Which number is the largest?"]
NUMBERS = [[3, 14], [5], [1, 2, 3], [42, 7, 9, 60]]


@pytest.fixture(scope="module")
def draft(pair):
    return load_model(pair["draft"])


@pytest.fixture(autouse=True)
def _back_to_eager(draft):
    yield
    set_engine(draft[0], "eager")


def _inputs(proc, n: int, *, images: bool = True, mode: str = "jrl"):
    """n prompts of different lengths (left padding), with or without their images."""
    msgs = [build_messages(QUESTIONS[i % 4], mode=mode, with_image=images) for i in range(n)]
    imgs = [render(NUMBERS[i % 4]) if images else None for i in range(n)]
    return prepare_inputs(proc, msgs, imgs)


def _split_run(model, proc, inputs, stop_at, keep, n_new):
    """Prefix rows stop at different steps, then a subset continues from the same cache."""
    prefix = gen.generate_prefix(model, proc.tokenizer, inputs, digit_ids=digit_token_ids(proc.tokenizer),
                                 stop_fn=lambda b, ids, text: len(ids) >= stop_at[b])
    new = gen.continue_rows(model, proc.tokenizer, gen.select_rows(prefix.state, keep), max_new_tokens=n_new)
    # the source state stays usable after a selection: continue the others from it too
    rest = [b for b in range(len(stop_at)) if b not in keep]
    more = gen.continue_rows(model, proc.tokenizer, gen.select_rows(prefix.state, rest), max_new_tokens=4)
    return prefix.tokens, new, more


def test_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 9, 64, 65)] == [1, 2, 4, 8, 16, 64, 128]
    assert [length_bucket(n, 16) for n in (1, 16, 17, 40)] == [16, 16, 32, 48]


@pytest.mark.parametrize("images", [True, False])
def test_static_engine_equals_eager_loop(draft, images):
    """Left padding, holes from rows that stop at different steps, prefix -> continue, images or not;
    a small length bucket forces the cache to grow (migrate) mid-continuation."""
    model, proc = draft
    inputs = _inputs(proc, 3, images=images)
    stop_at, keep = [3, 7, 11], [0, 2]
    set_engine(model, "eager")
    want = _split_run(model, proc, inputs, stop_at, keep, 15)
    want_plain = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=20)
    set_engine(model, "static", length_step=8)
    got = _split_run(model, proc, inputs, stop_at, keep, 15)
    got_plain = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=20)
    assert got == want and got_plain == want_plain
    assert len(set(want_plain[2])) > 3  # varied outputs, not one repeated token


def test_static_engine_keeps_the_same_tenths_logits(draft):
    """IPR's input (logits at the tenths digit) is the same under the forced rating grammar."""
    model, proc = draft
    inputs = _inputs(proc, 3)
    kwargs = {"digit_ids": digit_token_ids(proc.tokenizer), "forced": gen.rating_template(proc.tokenizer, "jrl")}
    set_engine(model, "eager")
    want = gen.generate_prefix(model, proc.tokenizer, inputs, **kwargs)
    set_engine(model, "static")
    got = gen.generate_prefix(model, proc.tokenizer, inputs, **kwargs)
    assert got.tokens == want.tokens and got.tenths.keys() == want.tenths.keys()
    for tag in want.tenths:
        assert got.tenths[tag].keys() == want.tenths[tag].keys() == {0, 1, 2}
        for row, (logits, digit) in want.tenths[tag].items():
            assert got.tenths[tag][row][1] == digit
            torch.testing.assert_close(got.tenths[tag][row][0], logits, rtol=1e-4, atol=1e-4)


def test_forced_template_is_the_written_tokenisation(draft):
    """The forced scaffold is what a trained draft writes: BPE merges across tags ('><') included,
    the two digits of each rating free, and the closing '>' chosen among the tokens starting with it."""
    tok = draft[1].tokenizer
    template = gen.rating_template(tok, "jrl")
    written = tok.encode("<target>0.12</target><confidence>0.34</confidence><think>", add_special_tokens=False)
    digits = iter(tok.encode("1234", add_special_tokens=False))
    filled = [next(digits) if s is None else s for s in template.slots]
    assert written[:len(filled)] == filled and template.slots.count(None) == 4
    assert written[len(filled)] in template.close_ids and tok.decode(written[len(filled)]) == "><"
    assert all(tok.decode(i).startswith(">") for i in template.close_ids)
    assert len(template) == len(filled) + 1


def test_forced_prefix_jumps_over_the_scaffold(draft):
    """jrl: one prefill and 5 forwards (4 digits, the closing token) instead of one per token, with
    the tokens and IPR logits of one-token steps (the static engine feeds one token per step)."""
    model, proc = draft
    inputs = _inputs(proc, 3)
    kwargs = {"digit_ids": digit_token_ids(proc.tokenizer), "forced": gen.rating_template(proc.tokenizer, "jrl")}
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        jumped = gen.generate_prefix(model, proc.tokenizer, inputs, **kwargs)
    finally:
        hook.remove()
    assert len(calls) == 6 and jumped.stop == ["closed"] * 3
    assert all(len(t) == len(kwargs["forced"]) for t in jumped.tokens)
    set_engine(model, "static")
    stepped = gen.generate_prefix(model, proc.tokenizer, inputs, **kwargs)
    assert stepped.tokens == jumped.tokens
    for tag in ("confidence", "target"):
        for row, (logits, digit) in stepped.tenths[tag].items():
            assert jumped.tenths[tag][row][1] == digit
            torch.testing.assert_close(jumped.tenths[tag][row][0], logits, rtol=1e-4, atol=1e-4)
    # the continuation from the jumped cache equals the one from the stepped cache
    set_engine(model, "eager")
    want = gen.continue_rows(model, proc.tokenizer, gen.generate_prefix(model, proc.tokenizer, inputs, **kwargs).state,
                             max_new_tokens=8)
    set_engine(model, "static")
    assert gen.continue_rows(model, proc.tokenizer, stepped.state, max_new_tokens=8) == want


def test_finished_rows_are_shed_to_a_smaller_bucket(draft):
    """4 rows, 3 already done: the live row moves to a batch-1 bucket and still decodes exactly."""
    model, proc = draft
    inputs = _inputs(proc, 4)
    done = [True, False, True, True]
    outs = {}
    for kind in ("eager", "static"):
        set_engine(model, kind)
        state, logits = gen.prefill(model, inputs)
        state.pending = logits.argmax(-1)
        outs[kind] = gen.continue_rows(model, proc.tokenizer, state, max_new_tokens=9, done=done)
        if kind == "static":
            assert state.static.kv.batch == 1 and state.static.rows == 1
    assert outs["static"] == outs["eager"] and outs["eager"][0] == [] and len(outs["eager"][1]) == 9


@pytest.mark.slow  # ~10 s of tracing on 2 cores; `make test-lowest` runs it in CI by name
def test_compiled_step_equals_eager_loop(draft):
    """The step traced by dynamo (light backend for CI speed) decodes the same tokens."""
    model, proc = draft
    inputs = _inputs(proc, 2)
    set_engine(model, "eager")
    want = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=6)
    set_engine(model, "compiled", backend="eager")
    assert gen.generate(model, proc.tokenizer, inputs, max_new_tokens=6) == want


@pytest.mark.slow  # ~15 s of tracing; `make test-lowest` runs it in CI by name
def test_batch_size_sequence_compiles_a_bounded_number_of_graphs(draft):
    """Serving-like traffic: batch sizes 1, 3, 1, 3, 4 use two batch buckets (1, 4) x one length
    bucket; pooled caches are reused, so requests of a seen bucket compile nothing more."""
    from torch._dynamo.utils import counters

    model, proc = draft
    torch._dynamo.reset()
    counters.clear()
    set_engine(model, "compiled", backend="eager", length_step=256)
    seen = []
    for n in (1, 3, 1, 3, 4):
        gen.generate(model, proc.tokenizer, _inputs(proc, n), max_new_tokens=3)
        seen.append(counters["stats"]["unique_graphs"])
    assert seen == [1, 2, 2, 2, 2], seen
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow
def test_inductor_compiled_engine_equals_eager_loop(draft):
    """The full compile (inductor, the GPU path minus CUDA graphs) on the prefix -> continue split."""
    model, proc = draft
    inputs = _inputs(proc, 3)
    set_engine(model, "eager")
    want = _split_run(model, proc, inputs, [3, 7, 11], [0, 2], 12)
    set_engine(model, "compiled")
    assert engine_for(model).compiled
    assert _split_run(model, proc, inputs, [3, 7, 11], [0, 2], 12) == want


@pytest.mark.slow
def test_bench_decode_runs_on_cpu(tmp_path):
    """benchmarks/bench_decode.py --size ... (tiny shapes) produces every row of the table."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--size", "test", "--batches", "2", "--new-tokens", "6", "--long", "6,8",
                       "--out", str(out)]) == 0
    rows = {r["row"] for r in json.loads(out.read_text())["rows"]}
    assert {"engine eager", "engine static", "HF generate dynamic", "HF generate static",
            "decision (rating prefix)", "kept / plain, 8 new", "GRPO step N=4 (rollout engine)"} <= rows


def test_static_engine_refuses_attention_without_4d_masks(draft):
    model, _ = draft
    saved = model.config._attn_implementation
    try:
        model.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ValueError, match="sdpa or eager"):
            set_engine(model, "static", length_step=512)  # a new option set: a new engine is built
        assert engine_for(model, "eager") is None
    finally:
        model.config._attn_implementation = saved
