"""Score spans -> completion token indices, on the real tiny tokenizer (both prompt formats)."""

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
