"""eval.py end to end: official MathVista scoring, and a model evaluation on a generated benchmark
in MathVista's official schema (testmini.json + images) that writes the report and the plots."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


import eval as eval_cli
from prp.toy.synthetic import make_items, render

DATA = Path(__file__).parent / "data" / "mathvista"




@pytest.mark.parametrize("output, line", [("output_bard.json", "accuracy: 34.8 (348/1000)"),
                                          ("output_gpt4.json", "accuracy: 26.1 (261/1000)")])
def test_score_cli_reproduces_published_numbers(output, line, capsys):
    eval_cli.main(["--bench", "mathvista", "--score", str(DATA / output), "--data-dir", str(DATA)])
    assert capsys.readouterr().out.strip() == line


def _mathvista_like(root: Path, n: int) -> Path:
    """n sum questions written as an official testmini.json (free-form integers) + images/."""
    (root / "images").mkdir(parents=True)
    problems = {}
    for i, item in enumerate(make_items(n, seed=0, split="test", levels=(1, 2))):
        pid = str(i + 1)
        render(item.numbers).save(root / "images" / f"{pid}.png")
        problems[pid] = {
            "pid": pid, "question": "What is the sum of the numbers in the image?", "image": f"images/{pid}.png",
            "choices": None, "unit": None, "precision": None, "answer": str(sum(item.numbers)),
            "question_type": "free_form", "answer_type": "integer", "metadata": {"split": "testmini"},
        }
    problems["999"] = dict(problems["1"], pid="999", image="images/missing.png")  # counted, not a crash
    (root / "testmini.json").write_text(json.dumps(problems))
    return root


def test_eval_runs_models_writes_report_and_resumes(tmp_path, capsys, pair):
    data = _mathvista_like(tmp_path / "mathvista", 6)
    out = tmp_path / "eval"
    argv = ["--bench", "mathvista", "--data-dir", str(data), "--draft", str(pair["draft"]),
            "--target", str(pair["target"]), "--rating", "forced", "--max-new-tokens", "6",
            "--batch-size", "4", "--out-dir", str(out), "--p-t", "0.5", "--p1-model", str(pair["target"])]
    paths = eval_cli.main(argv)
    printed = capsys.readouterr().out
    assert "skipped while loading: {'missing_image': 1}" in printed
    assert "6 instances" in printed
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert {"draft_correct", "target_correct", "d", "t", "ipr_d", "draft_latency_s", "target_latency_s"} <= set(row)
        assert 0.0 <= row["d"] <= 0.99 and "</confidence>" in row["prefix"]
        assert 0.0 < row["scores"]["p1"] <= 1.0
        assert row["draft_latency_s"] >= row["prefix_latency_s"] > 0
        # no IPR: JRL draft-first by hand
        assert row["scores"]["prp_no_ipr"] == pytest.approx(row["d"] + (row["d"] - row["t"]) / 2)
        d2, t2 = row["d"] + row["ipr_d"], row["t"] + row["ipr_t"]
        assert row["scores"]["prp"] == pytest.approx(d2 + (d2 - t2) / 2)
        # P1 on --p1-model's own answers: here the target model itself, greedy with the same prompt P,
        # so its answers and correctness are the target's; it decides after its full answer
        p1 = row["signal_answers"]["p1"]
        assert p1["model"] == Path(pair["target"]).name and p1["decision"] == "post_hoc"
        assert p1["answer"] == row["target_answer"] and p1["correct"] == row["target_correct"]
        assert p1["latency_s"] > 0 and row["rule"] == "draft_first"
    report = json.loads(Path(paths["json"]).read_text())
    assert report["n"] == 6
    assert report["signals"]["p1"]["answers"] == Path(pair["target"]).name
    assert "routes after the full answer" in report["signals"]["p1"]["label"]
    # the report names the model P1 ran on next to the paper's choice for the benchmark (Sec. 5)
    note = (f"P1 (mean token probability) on the answers of {Path(pair['target']).name}; "
            "the paper's P1 model on mathvista: the GRPO-trained model.")
    assert report["notes"][0] == note and f"- Note: {note}" in Path(paths["markdown"]).read_text()
    for plot in paths["plots"].values():
        assert Path(plot).stat().st_size > 1000
    # resume: a second run evaluates nothing new and keeps one line per id
    before = (out / "instances.jsonl").read_text()
    eval_cli.main(argv)
    assert (out / "instances.jsonl").read_text() == before


def test_special_token_signal_matches_a_direct_forward(tmp_path):
    """P2 = P[CN] / (P[CN] + P[UN]) at the token after the sft-cn model's answer."""
    from transformers import AutoModelForImageTextToText

    from prp.core.modeling import load_model, prepare_inputs
    from prp.core.prompts import build_messages
    from prp.eval.run import special_token_signal
    from prp.route.router import Query
    from prp.toy.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "cn", size="test", seed=3)
    model = AutoModelForImageTextToText.from_pretrained(path)
    _, processor = load_model(path)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["[CN]", "[UN]"]})
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval()
    image = render([3, 4])
    q = Query(id="a", question="What is the sum of the numbers in the image?", image=image)
    (s2,) = special_token_signal(model, processor, [q], max_new_tokens=0 + 1)
    # by hand: generate one token greedily, then read the next-token distribution
    inputs = prepare_inputs(processor, [build_messages(q.question, mode="target")], [image])
    with torch.no_grad():
        first = model(**inputs).logits[0, -1].argmax().item()
        tok = processor.tokenizer
        eos = set(model.generation_config.eos_token_id)
        eos |= {tok.convert_tokens_to_ids("[CN]"), tok.convert_tokens_to_ids("[UN]")}
        body = [] if first in eos else [first]
        ids = torch.cat([inputs["input_ids"], torch.tensor([body], dtype=torch.long)], dim=1)
        extra = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw")}
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=torch.cat(
                           [inputs["mm_token_type_ids"], torch.zeros((1, len(body)), dtype=torch.long)], 1),
                       **extra).logits[0, -1]
    cn, un = tok.convert_tokens_to_ids("[CN]"), tok.convert_tokens_to_ids("[UN]")
    expected = math.exp(logits[cn]) / (math.exp(logits[cn]) + math.exp(logits[un]))
    assert s2 == pytest.approx(expected, rel=1e-4)


def test_mean_token_prob_is_s1_over_the_answer_tokens(pair):
    """s_1 = (1/L) sum p_i over the generated tokens after the rating prefix, checked by a plain forward."""
    from prp.core.modeling import load_model, prepare_inputs
    from prp.core.prompts import build_messages
    from prp.eval.run import mean_token_prob
    from prp.route.router import Query

    model, processor = load_model(pair["draft"])
    image = render([5, 6])
    q = Query(id="a", question="What is the sum of the numbers in the image?", image=image)
    completion = processor.tokenizer.encode("<confidence>0.5</confidence><think>5+6=11</think>")
    k = len(processor.tokenizer.encode("<confidence>0.5</confidence>"))
    (s1,) = mean_token_prob(model, processor, [q], [completion], mode="drl", skip=[k])
    inputs = prepare_inputs(processor, [build_messages(q.question, mode="drl")], [image])
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion])], dim=1)
    extra = {key: v for key, v in inputs.items() if key in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra, mm_token_type_ids=torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros((1, len(completion)), dtype=torch.long)], 1)).logits[0]
    p = inputs["input_ids"].shape[1]
    probs = [torch.softmax(logits[p + j - 1], -1)[completion[j]].item() for j in range(k, len(completion))]
    assert s1 == pytest.approx(sum(probs) / len(probs), rel=1e-4)


@pytest.mark.slow  # three tiny models (~4 s alone); the hand-worked P2 values are in tests/test_report.py
def test_p2_row_uses_the_sft_cn_models_own_answers(tmp_path, pair):
    """P2's answer, correctness and latency in an instance row are the sft-cn model's (its s_2 is
    read off its own answer), not the routing draft's; both baselines decide post hoc."""
    from transformers import AutoModelForImageTextToText

    from prp.core.data import Record
    from prp.core.modeling import load_model
    from prp.eval.bench.registry import get_benchmark
    from prp.eval.run import Baselines, evaluate_batch, special_token_answers
    from prp.route.router import Query, Router, RouterConfig
    from prp.route.targets import LocalTarget
    from prp.toy.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "cn", size="test", seed=5)
    cn_model = AutoModelForImageTextToText.from_pretrained(path).eval()
    _, cn_proc = load_model(path)
    cn_proc.tokenizer.add_special_tokens({"additional_special_tokens": ["[CN]", "[UN]"]})
    cn_model.resize_token_embeddings(len(cn_proc.tokenizer))
    draft, dproc = load_model(pair["draft"])
    tmodel, tproc = load_model(pair["target"])
    router = Router(draft, dproc, LocalTarget(tmodel, tproc, max_new_tokens=3),
                    RouterConfig(mode="jrl", rating="forced", max_new_tokens=3))
    bench = get_benchmark("demo")
    images = [render([2, 3]), render([4, 5])]
    records = [Record(id=f"r{i}", question="What is the sum of the numbers in the image?", image=None,
                      answer=str(a)) for i, a in enumerate((5, 9))]
    rows = evaluate_batch(router, bench, records, images,
                          baselines=Baselines(sft_cn_model=cn_model, sft_cn_processor=cn_proc, sft_cn_name="cn",
                                              max_new_tokens=3))
    queries = [Query(id=r.id, question=r.question, image=im) for r, im in zip(records, images, strict=True)]
    bodies, s2 = special_token_answers(cn_model, cn_proc, queries, max_new_tokens=3)
    for row, rec, body, s in zip(rows, records, bodies, s2, strict=True):
        own = row["signal_answers"]["p2"]
        assert own["answer"] == bench.extract(cn_proc.tokenizer.decode(body, skip_special_tokens=True))
        assert own["correct"] == bench.judge(rec, own["answer"]) and own["model"] == "cn"
        assert own["decision"] == "post_hoc" and own["latency_s"] > 0
        assert row["scores"]["p2"] == pytest.approx(s, rel=1e-4)
        p1 = row["signal_answers"]["p1"]  # no --p1-model: the routing draft's own answers, labelled so
        assert p1["model"] == "routing draft" and p1["answer"] == row["draft_answer"]
        assert p1["latency_s"] == pytest.approx(row["draft_latency_s"])


def test_eval_resume_needs_the_same_models_and_settings(tmp_path, pair):
    """A rerun into the same --out-dir with another scoring flag, another model or rebuilt weights is
    refused (it would pool two runs' rows in one report); --no-resume starts afresh."""
    import os

    from prp.eval.settings import settings_path

    data = _mathvista_like(tmp_path / "mathvista", 3)
    out = tmp_path / "eval"
    argv = ["--bench", "mathvista", "--data-dir", str(data), "--draft", str(pair["draft"]),
            "--target", str(pair["target"]), "--rating", "forced", "--max-new-tokens", "4",
            "--batch-size", "4", "--out-dir", str(out), "--p-t", "0.5"]
    eval_cli.main(argv)
    table = out / "instances.jsonl"
    recorded = json.loads(settings_path(table).read_text())
    assert recorded["tau"] == 2.0 and recorded["p1_model"] is None
    assert recorded["draft"]["path"] == str(Path(pair["draft"]).resolve())
    eval_cli.main(argv)  # the same settings: resumed
    with pytest.raises(SystemExit, match=r"other settings \(tau differ\).*--no-resume"):
        eval_cli.main([*argv, "--tau", "3"])
    with pytest.raises(SystemExit, match=r"p1_model differ"):
        eval_cli.main([*argv, "--p1-model", str(pair["target"])])
    weights = Path(pair["draft"]) / "model.safetensors"  # the same folder, rebuilt weights
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(SystemExit, match=r"draft differ"):
        eval_cli.main(argv)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    settings_path(table).unlink()  # a cache nothing vouches for (an older version's)
    with pytest.raises(SystemExit, match=r"no instances.settings.json says"):
        eval_cli.main(argv)
    before = table.read_text()
    eval_cli.main([*argv, "--tau", "3", "--no-resume"])  # afresh, with its own settings recorded
    assert json.loads(settings_path(table).read_text())["tau"] == 3.0
    assert len(table.read_text().splitlines()) == len(before.splitlines()) == 3


def test_paper_p1_model_per_benchmark():
    """Sec. 5: P1 is Qwen2.5-VL-3B on ChartQA, the GRPO-trained model on MathVerse and MathVista."""
    from types import SimpleNamespace

    from prp.commands.eval import p1_note
    from prp.eval.bench.registry import paper_p1_note

    assert paper_p1_note("chartqa", "m").endswith("on chartqa: Qwen2.5-VL-3B (the base model; not GRPO-trained).")
    for bench in ("mathverse", "mathvista"):
        assert paper_p1_note(bench, "m").endswith(f"on {bench}: the GRPO-trained model.")
    assert "not given (the paper's Tab. 1 covers ChartQA, MathVerse and MathVista)" in paper_p1_note("m3cot", "m")
    args = SimpleNamespace(bench="chartqa", table=None, p1_model=None)
    assert p1_note(args).startswith("P1 (mean token probability) on the answers of the routing draft (no --p1-model)")
    args.p1_model = "/models/qwen3b"
    assert p1_note(args).startswith("P1 (mean token probability) on the answers of qwen3b;")
