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
