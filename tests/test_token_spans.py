"""Score spans -> completion token indices, on the real tiny tokenizer (both prompt formats)."""

import pytest

from prp.core.parsing import parse_completion, span_token_indices


def _pieces(tok, ids, idx):
    return [tok.decode([ids[i]]) for i in idx]


def test_drl_score_tokens(tok):
    text = "<confidence>0.87</confidence><think>2+3=5</think><answer>$5$</answer>"
    ids = tok.encode(text)
    p = parse_completion(tok.decode(ids), "drl")
    idx = span_token_indices(ids, tok, p.confidence_span)
    assert _pieces(tok, ids, idx) == ["0", ".", "8", "7"]
    assert idx == [2, 3, 4, 5]  # after "<confidence", ">"


def test_jrl_both_scores(tok):
    text = "<target>0.42</target><confidence>0.87</confidence><think>x</think><answer>1</answer>"
    ids = tok.encode(text)
    p = parse_completion(text, "jrl")
    t_idx = span_token_indices(ids, tok, p.target_span)
    d_idx = span_token_indices(ids, tok, p.confidence_span)
    assert _pieces(tok, ids, t_idx) == ["0", ".", "4", "2"]
    assert _pieces(tok, ids, d_idx) == ["0", ".", "8", "7"]
    assert set(t_idx).isdisjoint(d_idx)


def test_score_glued_to_the_tag_takes_the_whole_token(tok):
    # ">." is one token here: it overlaps the score ".5", so it belongs to the score
    text = "x<confidence>.5</confidence><think>a</think><answer>1</answer>"
    ids = tok.encode(text)
    assert tok.decode([ids[2]]) == ">."
    p = parse_completion(text, "drl")
    idx = span_token_indices(ids, tok, p.confidence_span)
    assert _pieces(tok, ids, idx) == [">.", "5"]


def test_score_glued_to_trailing_text_and_multibyte_prefix(tok):
    # malformed "0.87abc": the span is the whole content, all its tokens get the rating advantage
    text = "<confidence>0.87abc</confidence><think>a</think><answer>1</answer>"
    ids = tok.encode(text)
    p = parse_completion(text, "drl")
    assert p.confidence is None
    assert "".join(_pieces(tok, ids, span_token_indices(ids, tok, p.confidence_span))) == "0.87abc"
    # a two-byte character before the tag is split over two byte tokens; offsets stay aligned
    text = "é<confidence>0.9</confidence>"
    ids = tok.encode(text)
    p = parse_completion(tok.decode(ids), "drl")
    assert _pieces(tok, ids, span_token_indices(ids, tok, p.confidence_span)) == ["0", ".", "9"]


def test_no_span_no_tokens(tok):
    ids = tok.encode("<think>a</think>")
    assert span_token_indices(ids, tok, None) == []
    assert span_token_indices(ids, tok, (3, 3)) == []


def test_unclosed_rating_tokens_carry_its_minus_one(tok):
    """Eq. 4-5, 7 by hand: the -1 of an unclosed rating lands on the tokens of what it wrote.

    Group of N = 2, Acc = 0.5 (one right, one wrong):
      o_1 "<confidence>0.8</confidence>..."  R_dft = 1 - |0.8 - 0.5| = 0.7
      o_2 "<confidence>0.8<think>..."        unclosed -> R_dft = -1
    Eq. 5: mean = -0.15 -> A_d = [0.85, -1.15 + 0.3] = [0.85, -0.85].
    Eq. 7 with alpha = 1.5, |d_i| = 3 tokens ("0", ".", "8"): w = 1.5 * A_d / 3 = +-0.425.
    """
    import torch

    from prp.train.advantages import rating_advantages
    from prp.train.loss import Segment, token_advantage_map
    from prp.train.rewards import rating_reward

    texts = ["<confidence>0.8</confidence><think>a</think><answer>1</answer>",
             "<confidence>0.8<think>a</think><answer>2</answer>"]
    ids = [tok.encode(t) for t in texts]
    parsed = [parse_completion(t, "drl") for t in texts]
    r_dft = torch.tensor([rating_reward(p.confidence, 0.5) for p in parsed])
    assert r_dft.tolist() == pytest.approx([0.7, -1.0])
    a_d = rating_advantages(r_dft)
    assert a_d.tolist() == pytest.approx([0.85, -0.85])

    width = max(len(i) for i in ids)
    segments = torch.full((2, width), int(Segment.PROMPT))  # padding
    for row, (row_ids, p) in enumerate(zip(ids, parsed, strict=True)):
        segments[row, : len(row_ids)] = int(Segment.REST)
        d_idx = span_token_indices(row_ids, tok, p.confidence_span)
        assert _pieces(tok, row_ids, d_idx) == ["0", ".", "8"]
        segments[row, d_idx] = int(Segment.DRAFT)
    w = token_advantage_map(segments=segments, a_base=torch.zeros(2), a_d=a_d, alpha=1.5)
    assert w[1][segments[1] == Segment.DRAFT].tolist() == pytest.approx([-0.425] * 3)
    assert w[0][segments[0] == Segment.DRAFT].tolist() == pytest.approx([0.425] * 3)
    assert w.sum().item() == pytest.approx(0.0)  # a_base = 0: only the rating tokens carry weight


def test_empty_target_rating_tokens_carry_its_minus_one(tok):
    """Eq. 4 (R_tgt), 5, 8 by hand for JRL: an empty <target></target> is -1 on the tags' tokens.

    Acc_tgt = 0.6:  o_1 t = 0.4 -> R_tgt = 1 - 0.2 = 0.8;  o_2 t empty -> -1.
    Eq. 5: mean -0.1 -> A_t = [0.9, -0.9].  Eq. 8, beta = 1.5: each completion's TARGET tokens
    share beta * A_t = +-1.35, so o_1's three tokens "0", ".", "4" get 0.45 each.
    """
    import torch

    from prp.train.advantages import rating_advantages
    from prp.train.loss import Segment, token_advantage_map
    from prp.train.rewards import rating_reward

    texts = ["<target>0.4</target><confidence>0.9</confidence><think>a</think><answer>1</answer>",
             "<target></target><confidence>0.9</confidence><think>a</think><answer>1</answer>"]
    ids = [tok.encode(t) for t in texts]
    parsed = [parse_completion(t, "jrl") for t in texts]
    assert texts[1][slice(*parsed[1].target_span)] == "<target></target>"
    a_t = rating_advantages(torch.tensor([rating_reward(p.target, 0.6) for p in parsed]))
    assert a_t.tolist() == pytest.approx([0.9, -0.9])
    width = max(len(i) for i in ids)
    segments = torch.full((2, width), int(Segment.PROMPT))
    for row, (row_ids, p) in enumerate(zip(ids, parsed, strict=True)):
        segments[row, : len(row_ids)] = int(Segment.REST)
        segments[row, span_token_indices(row_ids, tok, p.target_span)] = int(Segment.TARGET)
    # every token overlapping the tags (here the last one, "><", reaches into "<confidence>")
    pieces = "".join(_pieces(tok, ids[1], (segments[1] == Segment.TARGET).nonzero().flatten().tolist()))
    assert pieces.startswith("<target></target>") and len(pieces) <= len("<target></target>") + 2
    w = token_advantage_map(segments=segments, a_base=torch.zeros(2), a_d=torch.zeros(2), a_t=a_t, beta=1.5)
    assert w[0][segments[0] == Segment.TARGET].tolist() == pytest.approx([0.45] * 3)
    assert w[1][segments[1] == Segment.TARGET].sum().item() == pytest.approx(-1.35)
