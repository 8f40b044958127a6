"""prp.core.answers.extract_answer: the <answer> tag first, then the documented fallbacks."""
import pytest

from prp.core.answers import extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer>1</answer> retry <answer>$2$</answer>", "2"),  # the last tag
        ("<answer> \\(x^2\\) </answer>", "x^2"),
        ("<answer>$$\\frac{1}{2}$$</answer>", "\\frac{1}{2}"),
        ("<answer>**C**</answer>", "C"),
        ("<answer>$\\boxed{7}$</answer>", "7"),
        ("<answer>(B) 12.</answer>", "(B) 12"),
        ("<answer>  </answer> the answer is 3", None),  # an empty tag is no answer, no fallback
        ("<answer>5", "5"),  # unclosed tag: falls back to the last number
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} then \\boxed{3}", "3"),  # the last box
        ("x = \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("\\boxed{1 + 2", "2"),  # an unbalanced box is ignored: the last number
        ("The answer is 12.5. Next, 99", "12.5"),
        ("The final answer is: B", "B"),
        ("Thus the answer is $4$.", "4"),
        ("Answer: 42\nbye 7", "42"),
        ("I count 3 cats and 1,200 dogs", "1200"),
        ("it drops to -3.5 degrees", "-3.5"),
        ("no idea", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The date is 12/15/89", "The date is 12/15/89"),  # no tag/box/"answer is": the whole text, not "89"
        ("  Mexico \n", "Mexico"),
        ("**Mexico**.", "Mexico"),  # bold and the sentence's period go
        ("U.S.", "U.S."),  # the period belongs to the abbreviation
        ("<answer>U.S.</answer>", "U.S."),
        ("<answer>a.m.</answer>", "a.m."),
        ("<answer>R.J. Reynolds Tobacco Co.</answer>", "R.J. Reynolds Tobacco Co."),
        ("<answer>Mexico.</answer>", "Mexico"),
        ("<answer>No.</answer>", "No"),  # a yes/no answer, not the abbreviation of "number"
        ("<answer>12.</answer>", "12"),
        ("So the answer is U.S. Steel. Then more.", "U.S. Steel"),  # the sentence ends after "Steel"
        ("The answer is 12.5. Next, 99", "12.5"),
        ("Answer: 42\nbye 7", "42"),
        ("work \\boxed{Acme Inc.} done", "Acme Inc."),
        ("<answer>A</answer> the answer is B", "A"),  # the tag still comes first
        ("<answer>  </answer> the answer is 3", None),  # an empty tag is no answer
        ("I think (B) rose, because roses are red.", "I think (B) rose, because roses are red"),
        ("", None),
        (None, None),
    ],
)
def test_extract_short_answer(text, expected):
    from prp.core.answers import extract_short_answer

    assert extract_short_answer(text) == expected


def test_benchmarks_pick_their_extraction():
    from prp.core.answers import extract_short_answer
    from prp.core.data import Record
    from prp.eval.bench.registry import BENCHMARKS

    for name in ("chartqa", "docvqa", "m3cot"):
        assert BENCHMARKS[name].extract is extract_short_answer
    for name in ("mathvista", "mathverse", "demo"):  # math rules unchanged, last number included
        assert BENCHMARKS[name].extract is extract_answer
    completion = "The date is 12/15/89"
    docvqa = BENCHMARKS["docvqa"]
    record = Record(id="1", question="Date?", image=None, answer=["The date is 12/15/89"])
    assert docvqa.judge(record, docvqa.extract(completion))
    chart = Record(id="2", question="Which country?", image=None, answer="U.S.")
    assert BENCHMARKS["chartqa"].judge(chart, BENCHMARKS["chartqa"].extract("<answer>U.S.</answer>"))
    assert not BENCHMARKS["chartqa"].judge(chart, extract_answer("<answer>U.S.</answer>"))  # "U.S" != "U.S."
