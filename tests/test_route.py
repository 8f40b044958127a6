"""Router: KV continuation, the three scoring rules, the three threshold modes, resume, error lines."""
from __future__ import annotations

import json

import pytest
import torch
from route_fixtures import Interrupt, InterruptingPolicy, build_queries, read_jsonl

from prp.core.modeling import digit_token_ids, load_model, prepare_inputs
from prp.core.prompts import build_messages
from prp.route import decode as gen
from prp.route import run as route_run
from prp.route.decide import BatchFraction, Calibration, FixedThreshold, calibrate, n_routed
from prp.route.ipr import digit_stats_reference
from prp.route.router import Query, Router, RouterConfig
from prp.route.scoring import apply_ipr, route_score
from prp.route.summary import summarize
from prp.route.targets import LocalTarget
from prp.toy.synthetic import render


@pytest.fixture(scope="module")
def draft(pair):
    return load_model(pair["draft"])


@pytest.fixture(scope="module")
def target(pair):
    model, proc = load_model(pair["target"])
    return LocalTarget(model, proc, max_new_tokens=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_queries(tmp_path_factory.mktemp("data"), 12)


def _router(draft, target, **cfg) -> Router:
    cfg.setdefault("max_new_tokens", 6)
    return Router(draft[0], draft[1], target, RouterConfig(**cfg))


def _queries(n=4):
    qs = ["What is the sum of the numbers in the image?", "How many?",
          "What is the largest number in the image? Give the final answer.", "Which number is the largest?"]
    nums = [[3, 14], [5], [1, 2, 3], [42, 7, 9, 60]]
    return [Query(id=f"q{i}", question=qs[i % 4], image=render(nums[i % 4]), gold=f"${sum(nums[i % 4])}$")
            for i in range(n)]


class KeepAll:
    def keep(self, scores):
        return [True] * len(scores)


class Prefills:
    """Counts the draft's forward calls by the number of tokens each feeds."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self._h = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.lengths.append(kwargs["input_ids"].shape[1])

    def close(self):
        self._h.remove()


# ------------------------------------------------------------------ step 4: KV continuation


def _reference(model, proc, query: Query, mode: str, n: int) -> list[int]:
    """One uninterrupted HF greedy generation of the same prompt, unpadded, batch of one."""
    inputs = prepare_inputs(proc, [build_messages(query.question, mode=mode)], [query.image])
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_continuation_with_holes_equals_uninterrupted_greedy(draft):
    """Rows stop their prefix at different steps (left padding + holes), a subset continues."""
    model, proc = draft
    queries = _queries(3)
    inputs = prepare_inputs(proc, [build_messages(q.question, mode="jrl") for q in queries],
                            [q.image for q in queries])
    stop_at = [3, 7, 11]
    counter = Prefills(model)
    prefix = gen.generate_prefix(model, proc.tokenizer, inputs, digit_ids=digit_token_ids(proc.tokenizer),
                                 stop_fn=lambda b, ids, text: len(ids) >= stop_at[b])
    new = gen.continue_rows(model, proc.tokenizer, gen.select_rows(prefix.state, [0, 2]), max_new_tokens=15)
    counter.close()
    assert [len(t) for t in prefix.tokens] == stop_at
    for j, b in enumerate([0, 2]):
        got = prefix.tokens[b] + new[j]
        assert got == _reference(model, proc, queries[b], "jrl", stop_at[b] + 15)
    assert len(set(prefix.tokens[2] + new[1])) > 5  # a varied output, not one repeated token
    # one prompt forward (the prefill); every other call feeds one token per row
    assert sum(1 for n in counter.lengths if n > 1) == 1 and counter.lengths[0] == inputs["input_ids"].shape[1]


def test_router_keeps_draft_without_second_prefill(draft, target):
    model, proc = draft
    router = _router(draft, target, mode="drl", max_prefix_tokens=10, max_new_tokens=12)
    queries = _queries(3)
    counter = Prefills(model)
    rows = router.route_batch(queries, KeepAll())
    counter.close()
    assert sum(1 for n in counter.lengths if n > 1) == 1
    for q, row in zip(queries, rows, strict=True):
        assert row["route"] == "draft" and row["prefix_stop"] == "cap" and row["d"] is None
        ref = _reference(model, proc, q, "drl", 10 + 12)
        assert row["completion_tokens"] == len(ref)
        assert row["text"] == proc.tokenizer.decode(ref, skip_special_tokens=True)


def test_plain_generate_matches_hf(draft):
    model, proc = draft
    queries = _queries(3)
    inputs = prepare_inputs(proc, [build_messages(q.question, mode="target") for q in queries],
                            [q.image for q in queries])
    mine = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=9)
    assert all(mine[i] == _reference(model, proc, q, "target", 9) for i, q in enumerate(queries))


def test_generate_never_emits_suppressed_tokens(draft):
    """`suppress` (P2's [CN] / [UN]): the suppressed ids never appear, greedy or sampled, and the
    greedy output is otherwise the argmax over the remaining vocabulary."""
    model, proc = draft
    queries = _queries(3)
    inputs = prepare_inputs(proc, [build_messages(q.question, mode="target") for q in queries],
                            [q.image for q in queries])
    plain = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=9)
    banned = sorted({t for row in plain for t in row[:3]})  # what greedy picks first
    for temperature in (0.0, 1.0):
        out = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=9, temperature=temperature,
                           generator=torch.Generator().manual_seed(0), suppress=banned)
        assert not {t for row in out for t in row} & set(banned)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert gen.choose(logits, suppress=[1]).item() == 3


# ------------------------------------------------------------------ step 2: scoring rules


@pytest.mark.parametrize("mode,rule", [("drl", "draft_first"), ("jrl", "draft_first"), ("jrl", "target_first")])
def test_scoring_rules_via_router(draft, target, mode, rule):
    router = _router(draft, target, mode=mode, rule=rule, tau=2.0, rating="forced", max_new_tokens=2)
    queries = _queries(4)
    prefix = router.pregenerate(queries)
    rows = router.route_batch(queries, BatchFraction(0.5, rule))
    for i, row in enumerate(rows):
        # the closing token is the draft's pick among those starting with ">" ('>' or a merge like '><')
        assert row["prefix_stop"] == "closed" and "</confidence>" in row["prefix"]
        assert ("<target>" in row["prefix"]) == (mode == "jrl")
        # IPR from the captured tenths-digit logits, checked against the torch reference
        logits, digit = prefix.tenths["confidence"][i]
        assert digit == int(f"{row['d']:.2f}"[2])
        ref = digit_stats_reference(logits[None], torch.tensor(router.digit_ids), row["d"]).ipr.item()
        assert row["ipr_d"] == pytest.approx(ref, rel=1e-5)
        d2 = apply_ipr(row["d"], row["ipr_d"])
        if mode == "drl":
            assert row["t"] is None and row["score"] == pytest.approx(d2)
        else:
            t2 = apply_ipr(row["t"], row["ipr_t"])
            assert row["score"] == pytest.approx(route_score(d2, t2, tau=2.0, rule=rule))
            assert row["score_no_ipr"] == pytest.approx(route_score(row["d"], row["t"], tau=2.0, rule=rule))
        assert row["rule"] == rule
    # Decision, in the rule's direction: draft-first sends the two lowest s to the target,
    # target-first the two highest (ties: the earlier query first)
    sign = -1 if rule == "target_first" else 1
    ranked = sorted(range(4), key=lambda i: (sign * rows[i]["score"], i))
    assert {i for i in range(4) if rows[i]["route"] == "target"} == set(ranked[:2])
    if mode == "jrl":  # a policy of the other rule is refused
        other = "draft_first" if rule == "target_first" else "target_first"
        with pytest.raises(ValueError, match="same rule"):
            router.route_batch(queries, BatchFraction(0.5, other))


def test_ipr_off_and_band(draft, target):
    q = _queries(4)
    off = _router(draft, target, mode="drl", rating="forced", ipr="off").route_batch(q, KeepAll())
    band = _router(draft, target, mode="drl", rating="forced", ipr="band").route_batch(q, KeepAll())
    for a, b in zip(off, band, strict=True):
        assert a["score"] == a["d"]
        assert a["d"] <= b["score"] <= a["d"] + 0.01  # band keeps the score inside its 0.01 band


# ------------------------------------------------------------------ step 3: thresholds


def test_fixed_threshold_and_batch_fraction():
    assert FixedThreshold(0.5).keep([0.9, 0.5, None, 0.51]) == [True, False, False, True]
    assert FixedThreshold(None).keep([0.0, None]) == [True, False]
    assert [n_routed(0.6, n) for n in (1, 2, 3, 5, 10, 20)] == [1, 1, 2, 3, 6, 12]
    # ties: earlier queries go to the target first; a missing score is the lowest
    assert BatchFraction(0.5).keep([0.5, 0.5, 0.5, None]) == [False, True, True, False]
    assert BatchFraction(0.0).keep([0.1, 0.2]) == [True, True]
    assert BatchFraction(1.0).keep([0.1, 0.2]) == [False, False]
    with pytest.raises(ValueError):
        BatchFraction(1.5).keep([0.1])


def test_calibrate_pt_and_target_acc(tmp_path):
    scores = [0.9, 0.1, 0.5, 0.7, None, 0.3]
    draft_ok = [1, 0, 1, 1, 0, 0]
    target_ok = [1, 1, 0, 1, 1, 1]
    cal = calibrate(scores, draft_ok, target_ok, p_t=0.5)
    assert cal.threshold == 0.3 and cal.p_t == 0.5 and cal.accuracy == 1.0
    # the cheapest threshold reaching 5/6: route the missing score and 0.1 (k = 2)
    cal = calibrate(scores, draft_ok, target_ok, target_acc=5 / 6)
    assert cal.threshold == 0.1 and cal.p_t == pytest.approx(2 / 6) and cal.accuracy == pytest.approx(5 / 6)
    assert calibrate(scores, draft_ok, target_ok, target_acc=0.0).threshold is None
    cal.save(tmp_path / "t.json")
    assert Calibration.load(tmp_path / "t.json") == cal
    with pytest.raises(ValueError):
        calibrate(scores, draft_ok, target_ok)


def test_cli_three_threshold_modes(pair, data, tmp_path):
    import route

    common = ["--draft", str(pair["draft"]), "--target", str(pair["target"]), "--data", str(data),
              "--rating", "forced", "--max-new-tokens", "3", "--batch-size", "6"]
    s = route.main([*common, "--pt", "0.5", "--out", str(tmp_path / "pt.jsonl")])
    assert s["queries"] == 12 and s["share_routed"] == 0.5  # 3 of each batch of 6
    rows = read_jsonl(tmp_path / "pt.jsonl")
    assert all(set(r) >= {"id", "d", "t", "ipr_d", "ipr_t", "score", "route", "answer", "fallback",
                          "prefix_latency_s", "continue_latency_s", "target_latency_s", "prefix_tokens",
                          "completion_tokens", "gold", "correct"} for r in rows)
    threshold = sorted(r["score"] for r in rows)[5]
    s = route.main([*common, "--threshold", str(threshold), "--out", str(tmp_path / "fixed.jsonl")])
    assert s["share_routed"] == 0.5
    # calibration on a labelled split (here the same file), saved then reused
    s = route.main([*common, "--calibrate", str(data), "--pt", "0.25", "--out", str(tmp_path / "cal.jsonl")])
    saved = json.loads((tmp_path / "cal.threshold.json").read_text())
    assert saved["requested"] == {"pt": 0.25} and saved["p_t"] == 0.25 and s["share_routed"] == 0.25
    s = route.main([*common, "--threshold-file", str(tmp_path / "cal.threshold.json"),
                              "--out", str(tmp_path / "reuse.jsonl"), "--measure-target-only"])
    assert s["share_routed"] == 0.25 and s["speedup_basis"] == "measured"
    rows = read_jsonl(tmp_path / "reuse.jsonl")  # the baseline: every query also answered by the target alone
    assert all(r["target_only_latency_s"] > 0 and isinstance(r["target_only_correct"], bool) for r in rows)
    assert s["target_only_accuracy"] == sum(r["target_only_correct"] for r in rows) / len(rows)
    kept = [r for r in rows if r["route"] == "draft"]
    assert kept and all(r["target_latency_s"] is None for r in kept)  # the baseline call is not the routing
    # --target-acc target: the cheapest T whose validation accuracy reaches the target's own
    route.main([*common, "--calibrate", str(data), "--target-acc", "target", "--out", str(tmp_path / "tgt.jsonl")])
    saved = json.loads((tmp_path / "tgt.threshold.json").read_text())
    assert saved["requested"] == {"target_acc": "target"} and saved["accuracy"] >= saved["target_accuracy"]
    # with a confidence the bound is saved, and it reaches the goal unless no threshold does
    route.main([*common, "--calibrate", str(data), "--target-acc", "target-0.2", "--confidence", "0.9",
                "--out", str(tmp_path / "conf.jsonl")])
    saved = json.loads((tmp_path / "conf.threshold.json").read_text())
    assert saved["requested"] == {"target_acc": "target-0.2", "confidence": 0.9} and saved["bound"] is not None


def test_confidence_bound_by_brute_force():
    """_lower_bounds equals mean - z * sd / sqrt(n) of the routed correctness (minus the target's),
    computed per split from scratch; the confident calibration never routes fewer queries."""
    import statistics

    import numpy as np

    from prp.route.decide import _lower_bounds

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        t, d = rng.integers(0, 2, n).astype(float).tolist(), rng.integers(0, 2, n).astype(float).tolist()
        z = statistics.NormalDist().inv_cdf(0.95)
        for minus in (None, t):
            got = _lower_bounds(t, d, 0.95, minus=minus)
            for k in range(n + 1):
                x = np.array(t[:k] + d[k:]) - (np.array(minus) if minus else 0.0)
                assert got[k] == pytest.approx(x.mean() - z * x.std(ddof=1) / np.sqrt(n), abs=1e-9)
        scores = rng.random(n).tolist()
        for goal in ("target", "target-0.05", 0.5):
            plain = calibrate(scores, d, t, target_acc=goal)
            sure = calibrate(scores, d, t, target_acc=goal, confidence=0.95)
            assert sure.p_t >= plain.p_t


# ------------------------------------------------------------------ failures lose nothing


def test_resume_every_line_once(draft, target, data, tmp_path):
    router = _router(draft, target, mode="drl", rating="forced", max_new_tokens=2)
    out = tmp_path / "routes.jsonl"
    with pytest.raises(Interrupt):
        route_run.route_file(router, data, out, InterruptingPolicy(at_batch=2), batch_size=5)
    assert len(read_jsonl(out)) == 0  # batch 1's routed queries (2 of 5) still waited for a full target batch
    with out.open("a") as f:  # a line torn by the interruption
        f.write('{"id": "test-000')
    rows = route_run.route_file(router, data, out, BatchFraction(0.5), batch_size=5, resume=True)
    ids = [r["id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    # a resume with nothing left does nothing
    assert len(route_run.route_file(router, data, out, BatchFraction(0.5), batch_size=5, resume=True)) == 12


class CountingTarget(LocalTarget):
    """The local target, recording the size of each call; `fail_on` ids make a call raise."""

    def __init__(self, target, fail_on=()):
        super().__init__(target.model, target.processor, max_new_tokens=target.max_new_tokens)
        self.calls: list[list[str]] = []
        self.fail_on = set(fail_on)

    def answer(self, queries):
        self.calls.append([q.id for q in queries])
        if self.fail_on & {q.id for q in queries}:
            raise RuntimeError("this query breaks the target")
        return super().answer(queries)


def test_routed_queries_of_several_batches_share_full_target_calls(draft, target, data, tmp_path):
    """12 lines in draft batches of 4, half routed: the target answers 4 routed queries per call
    (batches 1+2), then the last 2 at the end, instead of 2 per draft batch; each routed row's latency
    is its prefix share plus its share of the call it was in."""
    counting = CountingTarget(target)
    router = _router(draft, counting, mode="drl", rating="forced", max_new_tokens=2)
    rows = route_run.route_file(router, data, tmp_path / "r.jsonl", BatchFraction(0.5), batch_size=4)
    assert [len(c) for c in counting.calls] == [4, 2]
    routed = [r for r in rows if r["route"] == "target"]
    assert sorted(q for c in counting.calls for q in c) == sorted(r["id"] for r in routed) and len(routed) == 6
    assert all(r["answered_by"] == "target" and not r["fallback"] for r in routed)
    first = [r for r in routed if r["id"] in counting.calls[0]]
    assert len({r["target_latency_s"] for r in first}) == 1  # one call, shared evenly
    for r in routed:
        assert r["latency_s"] == pytest.approx(r["prefix_latency_s"] + r["target_latency_s"])
    # the measured baseline stays one target call per draft batch
    counting.calls.clear()
    route_run.route_file(router, data, tmp_path / "b.jsonl", BatchFraction(0.5), batch_size=4, target_all=True)
    assert sorted(len(c) for c in counting.calls) == [2, 4, 4, 4, 4]


def test_a_query_that_breaks_the_target_falls_back_alone(draft, target, data, tmp_path):
    """The target raises on one routed query: it is answered by the draft from its cache (fallback,
    with the error), its call's other routed queries still get the target's answers."""
    rows = route_run.route_file(_router(draft, target, mode="drl", rating="forced", max_new_tokens=2), data,
                                tmp_path / "ok.jsonl", BatchFraction(0.5), batch_size=4)
    bad = next(r["id"] for r in rows if r["route"] == "target")
    router = _router(draft, CountingTarget(target, fail_on=[bad]), mode="drl", rating="forced", max_new_tokens=2)
    rows = route_run.route_file(router, data, tmp_path / "r.jsonl", BatchFraction(0.5), batch_size=4)
    by_id = {r["id"]: r for r in rows}
    assert by_id[bad]["fallback"] and by_id[bad]["answered_by"] == "draft"
    assert "target_failed: RuntimeError" in by_id[bad]["error"] and by_id[bad]["text"]
    others = [r for r in rows if r["route"] == "target" and r["id"] != bad]
    assert len(others) == 5 and all(r["answered_by"] == "target" and not r["fallback"] for r in others)


def test_bad_lines_and_images_yield_error_lines(draft, target, data, tmp_path):
    lines = data.read_text().splitlines()[:3]
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    bad = [
        "{not json",
        json.dumps({"id": "noimg", "image": "missing.png", "question": "What?"}),
        json.dumps({"id": "corrupt", "image": str(tmp_path / "corrupt.png"), "question": "What?"}),
        json.dumps({"id": "empty", "question": ""}),
        json.dumps({"id": "textonly", "question": "What is 2+3?", "answer": "5"}),
    ]
    path = tmp_path / "mixed.jsonl"
    # images of the good lines are relative to the original file: make them absolute
    good = [json.dumps({**json.loads(line), "image": str(data.parent / json.loads(line)["image"])}) for line in lines]
    path.write_text("\n".join(good + bad) + "\n")
    router = _router(draft, target, mode="drl", rating="forced", max_new_tokens=2)
    # the good lines' images live beside another file: --allow-outside-image-paths (docs/routing.md)
    rows = route_run.route_file(router, path, tmp_path / "out.jsonl", BatchFraction(0.5), batch_size=4,
                                allow_outside_images=True)
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 8 and [r["line"] for r in rows] == list(range(1, 9))
    reason = {r["line"]: (r["error"] or "").split(":")[0] for r in rows}  # errors start with their reason
    assert rows[3]["id"] is None and reason[4] == "bad_json"  # line 4 has no readable id
    assert reason[5] == "missing_image" and reason[6] == "corrupt_image"
    assert by_id["empty"]["error"] == "empty_question"
    assert by_id["textonly"]["route"] in ("draft", "target") and by_id["textonly"]["error"] is None
    s = summarize(rows)
    assert s["errors"] == 4 and s["queries"] == 8


def test_cli_target_first_calibration_keeps_its_rule_and_judges_with_the_bench(pair, data, tmp_path):
    """--rule target_first: the saved threshold records its rule, a draft-first run refuses it, and
    every line's `correct` is the demo benchmark's verdict on its answer."""
    import route
    from prp.core.data import load_jsonl
    from prp.eval.judge import routing_judge

    common = ["--draft", str(pair["draft"]), "--target", str(pair["target"]), "--data", str(data),
              "--rating", "forced", "--max-new-tokens", "2", "--batch-size", "12", "--bench", "demo"]
    s = route.main([*common, "--rule", "target_first", "--calibrate", str(data), "--pt", "0.25",
                    "--out", str(tmp_path / "tf.jsonl")])
    saved = json.loads((tmp_path / "tf.threshold.json").read_text())
    assert saved["rule"] == "target_first" and saved["judge"] == "demo" and s["share_routed"] == 0.25
    rows = read_jsonl(tmp_path / "tf.jsonl")
    routed = [r["score"] for r in rows if r["route"] == "target"]
    kept = [r["score"] for r in rows if r["route"] == "draft"]
    assert min(routed) >= saved["threshold"] > max(kept)  # high s went to the target
    judge, recs = routing_judge("demo"), {r.id: r for r in load_jsonl(data).records}
    assert all(r["correct"] == judge(recs[r["id"]], r["answer"]) for r in rows)
    with pytest.raises(SystemExit, match="same rule"):
        route.main([*common, "--threshold-file", str(tmp_path / "tf.threshold.json"),
                    "--out", str(tmp_path / "df.jsonl")])


def test_route_rows_are_typed_per_query_and_round_trip(draft, target):
    """Router.rate feeds route_rows; every RouteRow survives to_json -> JSON -> from_json, and the
    per-query latencies follow the one convention: latency = prefix share + draft share (kept rows)."""
    from prp.route.rows import RatingRow, RouteRow

    router = _router(draft, target, mode="jrl", rating="forced", max_new_tokens=2)
    queries = _queries(4)
    _prefix, ratings = router.rate(queries)
    assert all(isinstance(r, RatingRow) for r in ratings) and [r.id for r in ratings] == ["q0", "q1", "q2", "q3"]
    assert len({r.prefix_latency_s for r in ratings}) == 1  # the batch's prefix time, divided evenly
    rows = router.route_rows(queries, KeepAll())
    for row in rows:
        assert isinstance(row, RouteRow) and row.rule == "draft_first" and row.mode == "jrl"
        assert RouteRow.from_json(json.loads(json.dumps(row.to_json()))) == row
        assert row.latency_s == pytest.approx(row.prefix_latency_s + row.continue_latency_s)
        assert row.target_latency_s is None
    assert len({row.continue_latency_s for row in rows}) == 1  # one continuation call, divided evenly


def test_route_never_imports_eval_or_train():
    """Import direction core <- route <- {train, eval}: no module of prp/route imports prp.eval or
    prp.train (the judge comes in as a callable from the entry script)."""
    import ast
    from pathlib import Path

    import prp.route

    bad = []
    for path in Path(prp.route.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name}: {n}" for n in names if n.startswith(("prp.eval", "prp.train"))]
    assert not bad, bad
