"""Presample labels (Acc_tgt, Alg. 2 l.1-7) use evaluation's answer extraction and judge."""
from __future__ import annotations

import json

import pytest

from prp.core.data import Record
from prp.train.presample import judge_completion, presample, read_cache


def _rec(rid: str, gold: str) -> Record:
    return Record(id=rid, question="q", answer=gold, image=None)


# target completions in the styles a target writes, with their hand-judged verdicts for gold "12"
TWELVE = [
    ("<think>4*3</think><answer>12</answer>", True),  # the tag
    ("4 * 3 = \\boxed{12}", True),  # a box, no tag: 0 on every record before
    ("Four rows of three. The answer is 12.", True),  # "the answer is"
    ("<answer>13</answer>", False),
]


@pytest.mark.parametrize("text, right", TWELVE)
def test_each_answer_style_is_judged(text, right):
    assert judge_completion(text, _rec("a", "12")) is right


def test_acc_tgt_counts_boxed_and_stated_answers(tmp_path):
    """Eq. 3 on the target's samples: Acc_tgt = (1/M) sum 1{correct}.

    gold 12: tag 12, box 12, "the answer is 12", tag 13 -> 3 of 4 = 0.75 (0.25 when only tags counted).
    gold B:  "The answer is (B).", "\\boxed{C}"           -> 1 of 2 = 0.5.
    """
    outputs = {"twelve": [t for t, _ in TWELVE], "choice": ["The answer is (B).", "so \\boxed{C}"]}
    cache = tmp_path / "acc.jsonl"
    records = [_rec("twelve", "12"), _rec("choice", "B")]
    counts = presample(records, lambda chunk: [outputs[r.id] for r in chunk], cache, m=4, batch_size=2)
    assert counts["done"] == 2
    assert read_cache(cache) == {"twelve": 0.75, "choice": 0.5}
    assert [json.loads(line)["n"] for line in cache.read_text().splitlines()] == [4, 2]


def test_presample_and_evaluation_give_the_same_verdicts():
    from prp.eval.judge import routing_judge

    judge = routing_judge("demo")  # evaluation's rule for a generic (embedded) benchmark
    texts = [t for t, _ in TWELVE] + ["no answer here", "", "about 3 then 12"]
    for text in texts:
        record = _rec("a", "12")
        assert judge_completion(text, record) == judge(record, judge.extract(text)), text


def test_a_benchmark_judge_brings_its_own_extraction(tmp_path):
    """ChartQA's relaxed accuracy (5% on numbers) with its short-answer extraction, gold 17:
    "The answer is 17.5" -> 17.5, |17.5 - 17| / 17 = 2.9% -> right; "<answer>20</answer>" -> 17.6% -> wrong.
    Acc_tgt = 0.5 (the default exact math judge: 0.0)."""
    from prp.eval.judge import routing_judge

    texts = ["The answer is 17.5", "<answer>20</answer>"]
    sampler = lambda chunk: [texts for _ in chunk]  # noqa: E731
    chart, plain = tmp_path / "chart.jsonl", tmp_path / "plain.jsonl"
    presample([_rec("c", "17")], sampler, chart, m=2, judge=routing_judge("chartqa"))
    presample([_rec("c", "17")], sampler, plain, m=2)
    assert read_cache(chart) == {"c": 0.5} and read_cache(plain) == {"c": 0.0}


def test_unjudgeable_gold_gets_no_label(tmp_path):
    counts = presample([_rec("x", "")], lambda chunk: [["\\boxed{1}"]], tmp_path / "a.jsonl", m=1)
    assert counts["no_gold"] == 1 and read_cache(tmp_path / "a.jsonl") == {}


def test_local_sampler_draws_m_samples_through_the_decode_engine(pair, monkeypatch):
    """Alg. 2 l.4 with a local target: M completions per record, sampled by prp.route.decode (the engine),
    and the same seed gives the same samples (a resumed presample draws what it drew before)."""
    from PIL import Image

    from prp.route import decode
    from prp.train.presample import local_sampler

    calls = []
    real = decode.generate
    monkeypatch.setattr(decode, "generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    image = Image.new("RGB", (56, 56), (120, 30, 200))
    records = [Record(id=f"r{i}", question=f"What is {i}+1?", answer=str(i + 1), image=image) for i in range(2)]
    sample = local_sampler(pair["target"], m=3, max_new_tokens=4, temperature=1.0, seed=7)
    first, again = sample(records), sample(records)
    assert [len(x) for x in first] == [3, 3] and all(isinstance(s, str) for x in first for s in x)
    assert first == again
    assert len(calls) == 2 and calls[0]["temperature"] == 1.0 and calls[0]["max_new_tokens"] == 4


# ---- Paradigm 2's pre-sampling stage (Sec. 2.1, Sec. 5): [CN]/[UN] labels by evaluation's rule

def test_presample_cn_labels_hand_judged_answers(tmp_path):
    """N answers per question, each labelled by evaluation's extraction + judge: TWELVE's hand verdicts
    for gold "12", and for gold "B" a choice letter; an unjudgeable gold gets no line."""
    from prp.train.presample import cn_examples, presample_cn, read_cn_set

    answers = {"twelve": [t for t, _ in TWELVE], "letter": ["<answer>B</answer>", "The answer is C."],
               "nogold": ["\\boxed{1}"]}
    recs = [_rec("twelve", "12"), _rec("letter", "B"), _rec("nogold", "")]
    path = tmp_path / "cn.jsonl"
    counts = presample_cn(recs, lambda chunk: [answers[r.id] for r in chunk], path, batch_size=2)
    assert counts["done"] == 2 and counts["no_gold"] == 1
    got = read_cn_set(path)
    assert [s["label"] for s in got["twelve"]] == ["[CN]", "[CN]", "[CN]", "[UN]"]  # tag, box, stated; 13
    assert [s["label"] for s in got["letter"]] == ["[CN]", "[UN]"] and "nogold" not in got
    assert got["twelve"][1]["text"] == "4 * 3 = \\boxed{12}"  # the answer is stored as sampled
    examples = cn_examples(recs, got)  # one training example per labelled answer
    assert [e.id for e in examples] == ["twelve#0", "twelve#1", "twelve#2", "twelve#3", "letter#0", "letter#1"]
    assert examples[3].meta["cn_label"] == "[UN]" and examples[3].meta["cn_text"] == "<answer>13</answer>"
    assert examples[3].answer == "12" and examples[3].question == "q"


def test_presample_cn_resumes_and_repairs_a_torn_line(tmp_path):
    from prp.train.presample import presample_cn, read_cn_set

    path = tmp_path / "cn.jsonl"
    presample_cn([_rec("a", "12")], lambda chunk: [["<answer>12</answer>"]], path)
    with path.open("a") as f:
        f.write('{"id": "b", "samples": [{"text": "1')  # killed mid-append
    assert set(read_cn_set(path)) == {"a"}

    def sampler(chunk):
        assert [r.id for r in chunk] == ["b"]  # "a" is labelled already: never sampled again
        return [["<answer>7</answer>"]]

    counts = presample_cn([_rec("a", "12"), _rec("b", "8")], sampler, path)
    assert counts["cached"] == 1 and counts["done"] == 1
    assert {k: [s["label"] for s in v] for k, v in read_cn_set(path).items()} == {"a": ["[CN]"], "b": ["[UN]"]}
    assert all(json.loads(line) for line in path.read_text().splitlines())  # no torn line left


def test_cn_sequence_trains_a_correct_answer_and_only_the_un_token_of_a_wrong_one():
    from prp.train.step import cn_sequence

    assert cn_sequence([5, 6, 7], True, 1, 2, 0) == ([5, 6, 7, 1, 0], [1.0] * 5)
    assert cn_sequence([5, 6, 7], False, 1, 2, 0) == ([5, 6, 7, 2, 0], [0.0, 0.0, 0.0, 1.0, 0.0])
