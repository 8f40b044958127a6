"""parse_completion: the Table 4 grammars, malformed ratings, and that it never raises."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prp.core.parsing import parse_completion
from prp.train.rewards import rating_reward

DRL_OK = "<confidence>0.87</confidence><think>2+3=5</think><answer>$5$</answer>"
JRL_OK = "<target>0.42</target><confidence>0.87</confidence><think>t</think><answer>$5$</answer>"


def test_drl_well_formed():
    p = parse_completion(DRL_OK, "drl")
    assert (p.confidence, p.target, p.answer, p.format_ok) == (0.87, None, "$5$", True)
    assert DRL_OK[slice(*p.confidence_span)] == "0.87"


def test_jrl_well_formed_and_order():
    p = parse_completion(JRL_OK, "jrl")
    assert (p.target, p.confidence, p.format_ok) == (0.42, 0.87, True)
    assert JRL_OK[slice(*p.target_span)] == "0.42"
    assert JRL_OK[slice(*p.confidence_span)] == "0.87"
    swapped = "<confidence>0.87</confidence><target>0.42</target><think>t</think><answer>5</answer>"
    q = parse_completion(swapped, "jrl")
    assert not q.format_ok and (q.target, q.confidence) == (0.42, 0.87)  # read, but wrong order


def test_whitespace_between_parts_and_inside_score():
    text = "<confidence> 0.5 </confidence>\n<think>a</think>\n<answer> 7 </answer>\n"
    p = parse_completion(text, "drl")
    assert p.format_ok and p.confidence == 0.5 and p.answer == "7"
    assert text[slice(*p.confidence_span)] == "0.5"


@pytest.mark.parametrize(
    "score_text, value",
    [("high", None), ("0.8.1", None), ("", None), ("-0.2", None), ("1e-1", None), ("1.7", 1.7), (".5", 0.5),
     ("1", 1.0)],
)
def test_malformed_and_out_of_range_scores(score_text, value):
    p = parse_completion(f"<confidence>{score_text}</confidence><think>x</think><answer>1</answer>", "drl")
    assert p.confidence == value
    if value is None or value > 1:
        assert rating_reward(p.confidence, 0.5) == -1.0


def test_prefix_only_and_missing_parts():
    p = parse_completion("<confidence>0.3</confidence>", "drl")  # the routing prefix
    assert p.confidence == 0.3 and p.answer is None and not p.format_ok
    q = parse_completion("<think>x</think><answer>1</answer>", "drl")
    assert q.confidence is None and q.confidence_span is None and not q.format_ok
    assert parse_completion(DRL_OK + "trailing junk", "drl").format_ok is False
    assert parse_completion("<answer>1</answer><answer>2</answer>", "grpo").answer == "2"
    with pytest.raises(ValueError):
        parse_completion(DRL_OK, "unknown")


_tags = st.sampled_from(["<confidence>", "</confidence>", "<target>", "</target>", "<think>", "</think>",
                         "<answer>", "</answer>", "0.", "1", ".9", "$", " "])
_texty = st.lists(st.one_of(_tags, st.text(max_size=8)), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_texty, mode=st.sampled_from(["drl", "jrl", "grpo"]))
def test_parser_never_raises(text, mode):
    p = parse_completion(text, mode)
    for value in (p.confidence, p.target):
        assert value is None or value >= 0.0
    for span in (p.confidence_span, p.target_span):
        assert span is None or 0 <= span[0] <= span[1] <= len(text)


@settings(max_examples=200, deadline=None)
@given(junk=st.text(max_size=12).filter(lambda s: "<" not in s), acc=st.floats(0, 1))
def test_every_malformed_rating_gets_minus_one(junk, acc):
    p = parse_completion(f"<confidence>{junk}</confidence><think>x</think><answer>1</answer>", "drl")
    stripped = junk.strip()
    # the accepted spelling: ASCII digits with at most one inner or leading point ("0.5", ".5", "1")
    is_number = re.fullmatch(r"[0-9]*\.?[0-9]+", stripped) is not None
    if not is_number or float(stripped) > 1:
        assert rating_reward(p.confidence, acc) == -1.0
    else:
        assert rating_reward(p.confidence, acc) == pytest.approx(1 - abs(float(stripped) - acc))


# ---------------------------------------------------------------- issue: exactly one structure (R_fmt)


@pytest.mark.parametrize(
    "text, mode",
    [
        ("<think>a</think><answer>1</answer><think>b</think><answer>2</answer>", "grpo"),
        ("<confidence>0.5</confidence><think>a</think><answer>1</answer><think>b</think><answer>2</answer>", "drl"),
        ("<confidence>0.5</confidence><think>a</think><answer>1</answer><answer>2</answer>", "drl"),
        ("<confidence>0.5</confidence><think>a<think>b</think><answer>1</answer>", "drl"),
        ("<confidence>0.5</confidence><think>a <confidence>0.9</confidence></think><answer>1</answer>", "drl"),
        ("<target>0.4</target><confidence>0.5</confidence><think>a</think><answer>1</think></answer>", "jrl"),
    ],
)
def test_two_structures_earn_no_format_reward(text, mode):
    from prp.train.rewards import format_reward

    assert format_reward(text, mode) == 0.0


def test_one_structure_earns_the_format_reward():
    from prp.train.rewards import format_reward

    # free text may hold "<" and other tags that are not structural, and span lines
    text = "<confidence>0.5</confidence>\n<think>x < y, so <b>2</b>\nok</think>\n<answer>$2$</answer>"
    assert format_reward(text, "drl") == 1.0
    assert format_reward(JRL_OK, "jrl") == 1.0


# ---------------------------------------------------------------- issue: the span of a bad rating


@pytest.mark.parametrize(
    "text, attempted",
    [
        ("<confidence>high</confidence><think>x</think>", "high"),  # closed, malformed content
        ("<confidence>1.7</confidence><think>x</think>", "1.7"),  # closed, out of range
        ("<confidence>  </confidence><think>x</think>", "<confidence>  </confidence>"),  # empty
        ("<confidence>0.8<think>x</think><answer>1</answer>", "0.8"),  # unclosed before a tag
        ("<confidence> 0.8 is my guess</think>", "0.8"),  # unclosed: first word only
        ("<confidence><think>x</think>", "<confidence>"),  # nothing written
        ("<confidence>", "<confidence>"),  # the text ends at the tag
        ("<confidence>0.9</target><think>x</think>", "0.9"),  # closed by the wrong tag = unclosed
    ],
)
def test_bad_rating_span_is_the_attempt(text, attempted):
    p = parse_completion(text, "drl")
    assert p.confidence is None or p.confidence > 1  # every one of these earns Eq. 4's -1
    assert rating_reward(p.confidence, 0.5) == -1.0
    assert text[slice(*p.confidence_span)] == attempted


def test_missing_rating_has_no_span():
    p = parse_completion("<think>x</think><answer>1</answer>", "jrl")
    assert p.confidence is None and p.confidence_span is None and p.target_span is None
