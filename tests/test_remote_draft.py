"""A served draft (issue 25): the same RatingRow / RouteRow through the one rating pipeline as the
local draft, IPR from top-K log-probabilities, the start-up capability check, and a draft that is
down (refused, or never answering) giving error rows within the deadline."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from fake_draft_server import FakeDraftServer, SilentServer, refused_url

from prp.core.data import load_jsonl
from prp.core.modeling import load_model
from prp.route.decide import FixedThreshold
from prp.route.ipr import digit_stats_reference, ipr_from_top_logprobs
from prp.route.remote import OpenAIClient, RetryPolicy
from prp.route.remote_draft import DraftCapabilityError, RemoteDraft
from prp.route.router import Query, Router, RouterConfig
from prp.route.targets import LocalTarget

DEMO = Path(__file__).resolve().parents[1] / "demo"


# ------------------------------------------------------------------ IPR from top-K (hand-computed)


def test_topk_ipr_exact_when_all_ten_digits_are_listed():
    """All ten digits in the top K: the same Eq. 9 value as the full softmax, to float precision."""
    torch.manual_seed(0)
    logits = torch.randn(1, 50, dtype=torch.float64) * 2
    logits[0, 20:30] += 8  # the ten digits (ids 20-29) rank high
    logp = torch.log_softmax(logits[0], -1)
    ids = list(range(20, 30))
    names = {i: str(i - 20) for i in ids}
    top = [(names.get(int(i), f"t{int(i)}"), float(logp[i])) for i in logp.argsort(descending=True)[:20]]
    assert sum(t.isdigit() for t, _ in top) == 10
    for rating in (0.83, 0.21):
        ref = digit_stats_reference(logits, torch.tensor(ids), rating).ipr.item()
        got = ipr_from_top_logprobs(top, rating)
        assert got.seen == 10 and got.bound == 0.0
        assert got.ipr == pytest.approx(ref, abs=1e-12)


def test_topk_ipr_bound_with_missing_digits_hand_computed():
    """Top K = {"7": 0.5, "8": 0.3, "x": 0.1}: 8 digits missing, each in [0, c], c = min(q, R) = 0.1
    (q = 0.1 the smallest listed probability, R = 1 - 0.9 the mass outside the list), together <= 0.1.
    p_max = 0.5 (exact).  Smallest variance: the missing digits equal at min(mean seen 0.4, c, R/8) =
    0.0125: sum p^2 = 0.25 + 0.09 + 8 * 0.0125^2 = 0.34125, mean 0.09, var = 0.034125 - 0.0081 = 0.026025.
    Largest: the vertices: all 0 (sum p^2 0.34, mean 0.08, var 0.0276) or one at 0.1 (0.35, 0.09: 0.0269):
    0.0276.  IPR in 0.5 * [0.026025, 0.0276] = [0.0130125, 0.0138]: estimate 0.01340625, bound 0.00039375."""
    top = [("7", math.log(0.5)), ("8", math.log(0.3)), ("x", math.log(0.1))]
    got = ipr_from_top_logprobs(top, 0.78)
    assert got.seen == 2
    assert got.ipr == pytest.approx(0.01340625, abs=1e-12)
    assert got.bound == pytest.approx(0.00039375, abs=1e-12)
    assert ipr_from_top_logprobs(top, 0.31).ipr == pytest.approx(-0.01340625, abs=1e-12)  # the low sign
    # every full distribution consistent with the list lies within the bound
    digit_ids = list(range(10))
    for missing in ([0.0] * 8, [0.1] + [0.0] * 7, [0.0125] * 8, [0.05, 0.05] + [0.0] * 6):
        probs = [0.0] * 10
        probs[7], probs[8] = 0.5, 0.3
        for d, p in zip([0, 1, 2, 3, 4, 5, 6, 9], missing, strict=True):
            probs[d] = p
        other = 1.0 - sum(probs)  # "x" (0.1) and the rest of the vocabulary share what is left
        logits = torch.log(torch.tensor([[*probs, 0.1, other - 0.1 + 1e-300]], dtype=torch.float64))
        true = digit_stats_reference(logits, torch.tensor(digit_ids), 0.78).ipr.item()
        assert abs(got.ipr - true) <= got.bound + 1e-12, missing


# ------------------------------------------------------------------ the served demo draft vs the local one


@pytest.fixture(scope="module")
def jrl_draft():
    return load_model(DEMO / "models" / "jrl")


@pytest.fixture(scope="module")
def served(jrl_draft):
    server = FakeDraftServer(*jrl_draft)
    yield server
    server.close()


def _queries(n: int = 4) -> list[Query]:
    recs = load_jsonl(DEMO / "data" / "test.jsonl", check_images=True).records[:n]
    return [Query(id=r.id, question=r.question, image=r.load_image(), gold=r.answer) for r in recs]


def _remote(url: str, *, rating: str, tries: int = 2, timeout_s: float = 60.0, **kw) -> RemoteDraft:
    client = OpenAIClient(url, "draft", role="draft",
                          retry=RetryPolicy(tries=tries, timeout_s=timeout_s, backoff_s=0.01))
    return RemoteDraft(client, mode="jrl", rating=rating, max_prefix_tokens=24, **kw)


@pytest.mark.parametrize("rating", ["forced", "free"])
def test_served_draft_rates_as_the_local_draft(jrl_draft, served, rating):
    """d, t, IPR and s from the chat API (top_logprobs of the real draft's logits) equal the in-process
    ones; the row says all ten digits were seen (exact IPR)."""
    model, proc = jrl_draft
    cfg = RouterConfig(mode="jrl", rating=rating, tau=2.0)
    queries = _queries()
    _, local = Router(model, proc, None, cfg).rate(queries)
    _, remote = Router(_remote(served.url, rating=rating), None, None, cfg).rate(_queries())
    assert [r.id for r in remote] == [r.id for r in local]
    for lo, re in zip(local, remote, strict=True):
        assert re.error is None and re.prefix_stop == "closed" == lo.prefix_stop
        assert (re.d, re.t) == (lo.d, lo.t) and lo.d is not None and lo.t is not None
        for key in ("ipr_d", "ipr_t", "score", "score_no_ipr"):
            assert getattr(re, key) == pytest.approx(getattr(lo, key), abs=1e-6), key
        assert re.ipr_digits_seen == 10 == lo.ipr_digits_seen and re.ipr_bound == 0.0
    if rating == "forced":  # a partial assistant message per rating, continued
        last = served.requests[-1]
        assert last["continue_final_message"] is True and last["add_generation_prompt"] is False
        assert last["messages"][-1]["content"].startswith("<target>0.") and last["top_logprobs"] == 20


def test_served_draft_routes_and_answers(jrl_draft, served):
    """The whole route: kept queries continue on the served draft (the prefix as a partial assistant
    message), the RouteRow has the draft's answer after its rating."""
    model, proc = jrl_draft
    cfg = RouterConfig(mode="jrl", rating="forced", max_new_tokens=40)
    target = LocalTarget(*load_model(DEMO / "models" / "target"), max_new_tokens=40)  # not asked: all kept
    router = Router(_remote(served.url, rating="forced"), None, target, cfg)
    rows = router.route_rows(_queries(2), FixedThreshold(-10.0, "draft_first"))
    local = Router(model, proc, target, cfg).route_rows(_queries(2), FixedThreshold(-10.0, "draft_first"))
    for row, lo in zip(rows, local, strict=True):
        assert row.route == "draft" and row.error is None and row.answered_by == "draft"
        assert row.text.startswith(row.prefix) and row.completion_tokens > row.prefix_tokens
        assert row.answer == lo.answer  # the same greedy answer after the same rating
    continued = [b["messages"][-1]["content"] for b in served.requests[-2:]]  # the two run concurrently
    assert all(b["continue_final_message"] is True for b in served.requests[-2:])
    assert sorted(continued) == sorted(r.prefix for r in rows)


# ------------------------------------------------------------------ start-up capability check


@pytest.mark.parametrize(("knobs", "says"), [
    ({"logprobs": False}, "no logprobs"),
    ({"top_cap": 5}, "returns 5 top_logprobs"),
    ({"continuation": False}, "does not continue a partial assistant message"),
])
def test_capability_check_names_the_missing_feature(jrl_draft, knobs, says):
    server = FakeDraftServer(*jrl_draft, **knobs)
    try:
        with pytest.raises(DraftCapabilityError, match=says):
            _remote(server.url, rating="forced").check()
    finally:
        server.close()


def test_capability_check_passes_and_catches_a_template_with_tokenizer(jrl_draft, served):
    """A good server passes; with the draft's tokenizer the check also catches a chat template whose
    list-of-parts branch renders the partial rating differently (the demo's template before issue 25)."""
    import subprocess

    from prp.core.modeling import load_processor

    model, proc = jrl_draft
    _remote(served.url, rating="forced").check()
    _remote(served.url, rating="forced", tokenizer=proc.tokenizer).check()
    old = subprocess.run(["git", "show", "6406860:demo/models/jrl/chat_template.jinja"], cwd=DEMO.parent,
                         capture_output=True, text=True)
    if old.returncode != 0:
        pytest.skip("git history not available")
    broken = load_processor(DEMO / "models" / "jrl")
    broken.chat_template = old.stdout
    server = FakeDraftServer(model, broken)
    try:
        _remote(server.url, rating="forced").check()  # without a tokenizer: "5" renders the same, not caught
        with pytest.raises(DraftCapabilityError, match="renders it differently"):
            _remote(server.url, rating="forced", tokenizer=proc.tokenizer).check()
    finally:
        server.close()


# ------------------------------------------------------------------ a draft that is down


class _NoTarget:
    """A target that must never be asked (no query is rated, so none is routed)."""

    remote, name = False, "none"

    def answer(self, queries):
        assert not queries, "a query without a rating reached the target"
        return []


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_draft_gives_error_rows_within_the_deadline(kind):
    silent = SilentServer() if kind == "silent" else None
    url = silent.url if silent else refused_url()
    try:
        draft = _remote(url, rating="forced", tries=2, timeout_s=1.0, concurrency=4)
        router = Router(draft, None, _NoTarget(), RouterConfig(mode="jrl", rating="forced"))
        queries = [Query(id=f"q{i}", question="What is 1+1?", image=None) for i in range(4)]
        start = time.monotonic()
        rows = router.route_rows(queries, FixedThreshold(0.5, "draft_first"))
        took = time.monotonic() - start
    finally:
        if silent:
            silent.close()
    # 4 queries in flight at once: about 2 tries x 1 s + one backoff; one after another would be 4 x that
    # (a loose bound: the machine may be loaded; what it rules out is a hang or a serial wait)
    assert took < 4 * (2 * 1.0 + 0.01) - 1.0
    for row in rows:
        assert row.route is None and row.error.startswith("draft_failed: draft: ")
        assert "127.0.0.1" not in row.error  # never the URL
    assert all(q.draft_error for q in queries)
    def asked_again(*_, **__):
        raise AssertionError("a query the draft already failed on was sent to the server again")

    draft.client.post = asked_again
    with pytest.raises(Exception) as err:  # the served router's entry: a 503, at once for a failed query
        router.route_batch(queries[:1], FixedThreshold(0.5, "draft_first"))
    assert getattr(err.value, "status", None) == 503


def test_batch_file_with_unreachable_draft_writes_error_rows(tmp_path, jrl_draft):
    from prp.route.run import route_file

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": "What is 1+1?"}) + "\n" for i in range(3)))
    router = Router(_remote(refused_url(), rating="forced", tries=2, timeout_s=1.0), None, _NoTarget(),
                    RouterConfig(mode="jrl", rating="forced"))
    rows = route_file(router, data, tmp_path / "out.jsonl", FixedThreshold(0.5, "draft_first"), batch_size=2,
                      max_prompt_tokens=512)
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert all(r["route"] is None and r["error"].startswith("draft_failed") for r in rows)


# ------------------------------------------------------------------ the command lines


def _demo_lines(tmp_path: Path, n: int, name: str = "q.jsonl") -> Path:
    """n demo test lines beside copies of their images (batch image paths stay under the file's folder)."""
    import shutil

    out = tmp_path / name
    lines = (DEMO / "data" / "test.jsonl").read_text().splitlines()[:n]
    with out.open("w") as f:
        for line in lines:
            rec = json.loads(line)
            copy = tmp_path / rec["image"]
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DEMO / "data" / rec["image"], copy)
            f.write(json.dumps(rec) + "\n")
    return out


def test_route_py_with_a_served_draft(tmp_path, served):
    """route.py --draft URL: a batch file and --calibrate through the served draft (the target local)."""
    from prp.commands.route import main

    data, val = _demo_lines(tmp_path, 3), _demo_lines(tmp_path, 4, "val.jsonl")
    common = ["--draft", served.url, "--draft-processor", str(DEMO / "models" / "jrl"), "--draft-timeout", "60",
              "--target", str(DEMO / "models" / "target"), "--rating", "forced", "--max-new-tokens", "16",
              "--data", str(data), "--out", str(tmp_path / "routes.jsonl"), "--batch-size", "2"]
    summary = main([*common, "--calibrate", str(val), "--pt", "0.5"])
    assert summary is not None
    rows = [json.loads(x) for x in (tmp_path / "routes.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["error"] is None and r["route"] in ("draft", "target") for r in rows)
    assert all(r["ipr_digits_seen"] == 10 and r["d"] is not None for r in rows)
    assert any(b.get("continue_final_message") for b in served.requests)


def test_route_py_refuses_a_draft_without_logprobs(tmp_path, jrl_draft, capsys):
    from prp.commands.route import main
    from prp.core.cli import run_main

    server = FakeDraftServer(*jrl_draft, logprobs=False)
    try:
        status = run_main(main, ["--draft", server.url, "--target", str(DEMO / "models" / "target"),
                                 "--data", str(_demo_lines(tmp_path, 1)), "--threshold", "0.5",
                                 "--out", str(tmp_path / "r.jsonl")], prog="route.py")
    finally:
        server.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith("route.py: error: --draft http://127.0.0.1:") and "no logprobs" in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_route_py_serve_with_a_served_draft_needs_its_processor(tmp_path, capsys):
    from prp.commands.route import main
    from prp.core.cli import run_main

    status = run_main(main, ["--serve", "--draft", refused_url(), "--target", str(DEMO / "models" / "target"),
                             "--threshold", "0.5", "--port", "0"], prog="route.py")
    assert status == 2 and "--draft-processor" in capsys.readouterr().err


def test_eval_py_with_a_served_draft(tmp_path, served):
    """eval.py --draft URL gives the local draft's table: ratings, scores, P1 (from the served answer's own
    log-probabilities), answers and correctness."""
    from prp.commands.eval import main

    tables = {}
    for name, draft in (("served", served.url), ("local", str(DEMO / "models" / "jrl"))):
        main(["--bench", "demo", "--data-dir", str(DEMO / "data"), "--draft", draft,
              "--target", str(DEMO / "models" / "target"), "--rating", "forced", "--max-new-tokens", "48",
              "--limit", "4", "--batch-size", "2", "--out-dir", str(tmp_path / name), "--p-t", "0.5"])
        tables[name] = [json.loads(x) for x in (tmp_path / name / "instances.jsonl").read_text().splitlines()]
    assert len(tables["served"]) == 4 and all("error" not in r for r in tables["served"])
    for re, lo in zip(tables["served"], tables["local"], strict=True):
        assert re["ipr_digits_seen"] == 10 and (re["d"], re["t"]) == (lo["d"], lo["t"])
        for key in ("prp", "prp_no_ipr"):
            assert re["scores"][key] == pytest.approx(lo["scores"][key], abs=1e-6), key
        # P1: the served answer's own token log-probabilities = teacher-forcing the same tokens locally
        assert 0.0 < re["scores"]["p1"] <= 1.0 and re["scores"]["p1"] == pytest.approx(lo["scores"]["p1"], abs=1e-5)
        assert (re["draft_answer"], re["draft_correct"]) == (lo["draft_answer"], lo["draft_correct"])


def test_served_router_answers_503_when_its_draft_never_answers():
    """route.py --serve in front of a draft that accepts connections and never answers: each request
    gets a 503 within the draft's deadline (timeout x tries + backoff), not a hang, and no URL."""
    from serve_fixtures import chat_body, post, start, stop

    silent = SilentServer()
    proc = None
    try:
        proc, url = start(["route.py", "--serve", "--port", "0", "--draft", silent.url, "--no-draft-check",
                           "--draft-processor", str(DEMO / "models" / "jrl"), "--draft-timeout", "1",
                           "--draft-tries", "2", "--draft-backoff", "0.1", "--target", str(DEMO / "models" / "target"),
                           "--rating", "forced", "--threshold", "0.5", "--threads", "1"])
        began = time.monotonic()
        status, body, _ = post(url, chat_body("What is 1+1?", max_tokens=8), timeout=30)
        took = time.monotonic() - began
    finally:
        if proc is not None:
            stop(proc)
        silent.close()
    assert status == 503, body
    message = body["error"]["message"]
    assert "draft is unavailable" in message and "TimeoutError" in message and "127.0.0.1" not in message
    assert took < 2 * 1.0 + 0.1 + 3.0  # the deadline, plus the server's own time


# ------------------------------------------------------------------ the request logic, scripted


class _Scripted:
    """A client stub answering each chat payload with `reply(payload)` (no HTTP)."""

    model = "draft"

    def __init__(self, reply):
        self.reply, self.payloads = reply, []

    def post(self, payload, *, parse=None):
        self.payloads.append(payload)
        data = self.reply(payload)
        return (data if parse is None else parse(data)), 1, 0.01  # OpenAIClient.post's contract


def _answer(entries, content=None, finish="length", stop_reason=None):
    """A chat completion whose logprobs.content lists (token, [(alternative, logprob), ...]) entries."""
    listed = [{"token": tok, "logprob": dict(top).get(tok, -9.0),
               "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]} for tok, top in entries]
    text = "".join(tok for tok, _ in entries) if content is None else content
    return {"choices": [{"message": {"content": text}, "finish_reason": finish, "stop_reason": stop_reason,
                         "logprobs": {"content": listed}}], "usage": {"prompt_tokens": 10}}


def test_forced_rating_asks_again_when_the_server_prefers_another_token():
    """The server's greedy token after `<confidence>0.` is not a digit: the tenths digit is the best digit
    of its top-K (7), the hundredths is asked from `<confidence>0.7`, then the closing token (`><`, the most
    likely token starting with `>`)."""
    def reply(payload):
        partial = payload["messages"][-1]["content"]
        return {"<confidence>0.": _answer([("x", [("x", -0.1), ("7", -1.0), ("3", -2.0)])]),
                "<confidence>0.7": _answer([("2", [("2", -0.5), ("9", -1.5)])]),
                "<confidence>0.72</confidence": _answer([("><", [("><", -0.2), (">", -0.3), ("a", -0.1)])]),
                }[partial]

    client = _Scripted(reply)
    draft = RemoteDraft(client, mode="drl", rating="forced")
    got = draft.prefix_one(Query(id="q", question="Q?", image=None))
    assert got.error is None and got.text == "<confidence>0.72</confidence><" and got.stop == "closed"
    assert got.requests == 3 and got.tokens == 3
    assert got.top["confidence"] == [("x", -0.1), ("7", -1.0), ("3", -2.0)]
    assert [p["max_tokens"] for p in client.payloads] == [2, 1, 1]
    assert all(p["continue_final_message"] and not p["add_generation_prompt"] for p in client.payloads)


def test_forced_rating_without_a_digit_in_the_top_k_is_an_error():
    client = _Scripted(lambda p: _answer([("x", [("x", -0.1), ("y", -1.0)])]))
    draft = RemoteDraft(client, mode="drl", rating="forced")
    query = Query(id="q", question="Q?", image=None)
    got = draft.prefix_one(query)
    assert got.error == query.draft_error and "no digit among the top 20" in got.error


def test_free_prefix_from_a_server_that_drops_the_stop_string():
    """Without include_stop_str_in_output the text lacks `</confidence>`; stop_reason says it was hit."""
    tokens = ["<", "confidence", ">", "0", ".", "8", "5"]
    entries = [(t, [(t, -0.01), ("3", -5.0)]) for t in tokens]
    client = _Scripted(lambda p: _answer(entries, finish="stop", stop_reason="</confidence>"))
    got = RemoteDraft(client, mode="drl").prefix_one(Query(id="q", question="Q?", image=None))
    assert got.text == "<confidence>0.85</confidence>" and got.stop == "closed" and got.tokens == 7
    assert got.top["confidence"] == [("8", -0.01), ("3", -5.0)]  # the tenths digit's list
    payload = client.payloads[0]
    assert payload["stop"] == ["</confidence>"] and payload["include_stop_str_in_output"] is True
    assert payload["temperature"] == 0.0 and payload["top_logprobs"] == 20 and payload["logprobs"] is True


def test_calibration_refuses_to_run_on_a_failing_draft(tmp_path):
    """A validation query the draft failed on has no rating: calibrating on the others would quietly shift T."""
    from prp.core.cli import UserError
    from prp.eval.judge import routing_judge
    from prp.route.run import calibrate_on

    val = _demo_lines(tmp_path, 2, "val.jsonl")
    router = Router(_remote(refused_url(), rating="forced", tries=1, timeout_s=1.0), None, _NoTarget(),
                    RouterConfig(mode="jrl", rating="forced"))
    with pytest.raises(UserError, match="the draft failed on 2 of 2 validation queries"):
        calibrate_on(router, val, p_t=0.5, target_acc=None, judge=routing_judge("demo"))


@pytest.mark.parametrize("rating", [0.49, 0.50, 0.59, 0.60, 1.00])
def test_top_k_ipr_takes_eq9_sign_band_as_the_local_ipr(rating):
    """The served IPR's sign is the local one's (issue 28: high iff the tenths digit > 5, or 1.00)."""
    import math

    import torch

    from prp.route.ipr import ipr_from_digit_probs, ipr_from_top_logprobs
    p = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.5], dtype=torch.float64)
    top = [(str(d), math.log(float(p[d]))) for d in range(10)]
    served = ipr_from_top_logprobs(top, rating)
    local = float(ipr_from_digit_probs(p[None], torch.tensor([rating], dtype=torch.float64))[0])
    expected = 0.5 * float(((p - p.mean()) ** 2).mean())  # p_max * variance, by hand: 0.5 * 0.0180
    assert abs(abs(local) - expected) < 1e-12 and abs(served.ipr - local) < 1e-12
    assert (served.ipr > 0) == (rating >= 0.6)


@pytest.mark.parametrize("entries", [[5], [{"logprob": -0.1}], [{"token": "0", "logprob": "x"}],
                                     [{"token": "0", "logprob": -0.1, "top_logprobs": [7]}]])
def test_malformed_logprob_entries_are_the_drafts_error_not_a_crash(entries):
    """A draft server whose logprobs.content entries are not {token, logprob, top_logprobs}: the query gets
    the draft's error (a row or a 503), remembered so it is not asked again, never a TypeError."""
    def reply(payload):
        return {"choices": [{"message": {"content": "<confidence>0.5"}, "finish_reason": "stop",
                             "logprobs": {"content": entries}}]}

    from prp.route.remote import OpenAIClient, RetryPolicy

    client = OpenAIClient("http://127.0.0.1:9", "draft", role="draft", retry=RetryPolicy(tries=1, timeout_s=1.0))
    client._post_once = lambda body: reply(json.loads(body))  # the HTTP layer, stubbed
    draft = RemoteDraft(client, mode="jrl", rating="free", max_prefix_tokens=24)
    query = Query(id="q", question="What is 1+1?", image=None)
    out = draft.prefix_one(query)
    assert out.error and "malformed response" in out.error and query.draft_error
