"""Remote targets against REAL HTTP servers: retries, fallback, one total deadline per attempt
(a trickling target), no redirects with the key, a response size cap, no target URL shown."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from route_fixtures import build_queries
from serve_fixtures import HostileTarget, chat_body, free_port, png_bytes, post, start, stop

from prp.core.modeling import load_model
from prp.route import run as route_run
from prp.route.decide import BatchFraction
from prp.route.remote import OpenAIClient, RemoteError, RetryPolicy
from prp.route.router import Router, RouterConfig
from prp.route.targets import RemoteTarget


@pytest.fixture(scope="module")
def faulty_canned():
    """The HTTP layer alone (no model, starts in a second), failing 30% of requests."""
    proc, url = start(["-m", "prp.serve", "--canned", "42", "--port", "0"],
                      {"PRP_SERVE_FAULTS": "rate=0.3,kinds=503+close,seed=1"})
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def faulty_server(pair):
    """The tiny target behind the model server, failing 30% of requests (503 / dropped / too slow)."""
    proc, url = start(["-m", "prp.serve", "--model", str(pair["target"]), "--port", "0", "--max-new-tokens", "4",
                       "--name", "tiny-target"],
                      {"PRP_SERVE_FAULTS": "rate=0.3,kinds=503+close+timeout,delay=3.5,seed=1"})
    yield url
    stop(proc)


def _many_queries(tmp_path: Path, n: int) -> Path:
    """n query lines reusing 10 rendered images (rendering 200 PNGs is not what is under test)."""
    base = build_queries(tmp_path / "imgs", 10)
    lines = base.read_text().splitlines()
    out = tmp_path / "many.jsonl"
    with out.open("w") as f:
        for i in range(n):
            rec = json.loads(lines[i % 10])
            rec["id"], rec["image"] = f"q{i:03d}", os.path.relpath(base.parent / rec["image"], tmp_path)
            f.write(json.dumps(rec) + "\n")
    return out


def _remote_router(pair, url: str, *, tries: int, timeout_s: float) -> Router:
    model, proc = load_model(pair["draft"])
    client = OpenAIClient(url, "tiny-target", retry=RetryPolicy(tries=tries, timeout_s=timeout_s, backoff_s=0.01),
                          max_tokens=4)
    cfg = RouterConfig(mode="drl", rating="forced", max_new_tokens=3)
    return Router(model, proc, RemoteTarget(client, concurrency=8), cfg)


@pytest.mark.slow
def test_remote_with_injected_failures_loses_nothing(pair, faulty_server, tmp_path):
    data = _many_queries(tmp_path, 100)
    # 3 s per attempt (total): a queue of 8 on one busy CPU model must fit; the injected delay does not
    router = _remote_router(pair, faulty_server, tries=5, timeout_s=3.0)
    rows = route_run.route_file(router, data, tmp_path / "out.jsonl", BatchFraction(1.0), batch_size=50)
    assert sorted(r["id"] for r in rows) == [f"q{i:03d}" for i in range(100)]
    assert all(r["route"] == "target" for r in rows)
    answered = [r for r in rows if not r["fallback"]]
    fell_back = [r for r in rows if r["fallback"]]
    assert all(r["answered_by"] == "tiny-target" and r["error"] is None for r in answered)
    assert all(r["answered_by"] == "draft" and r["error"] and r["text"] for r in fell_back)
    assert sum(r["target_attempts"] for r in rows) > 115  # the faults did happen, and were retried
    assert len(answered) >= 95


def test_refused_connection_falls_back_to_draft(pair, tmp_path):
    data = _many_queries(tmp_path, 6)
    port = free_port()
    router = _remote_router(pair, f"http://127.0.0.1:{port}", tries=2, timeout_s=1.0)
    rows = route_run.route_file(router, data, tmp_path / "out.jsonl", BatchFraction(0.5), batch_size=6)
    routed = [r for r in rows if r["route"] == "target"]
    assert len(rows) == 6 and len(routed) == 3
    for r in routed:
        assert r["fallback"] and r["answered_by"] == "draft" and "Refused" in r["error"]
        assert str(port) not in r["error"]  # the target's address is never in a row
        assert r["text"].startswith(r["prefix"])  # the draft continued its own prefix
    assert not any(r["fallback"] for r in rows if r["route"] == "draft")


def test_client_does_not_retry_4xx_and_never_leaks_key(faulty_canned, monkeypatch):
    monkeypatch.setenv("PRP_TEST_KEY", "sk-secret-123")
    client = OpenAIClient(faulty_canned, "m", api_key_env="PRP_TEST_KEY", retry=RetryPolicy(tries=3, backoff_s=0.01))
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]
    with pytest.raises(RemoteError) as exc:
        for _ in range(20):  # the server may inject a 503 first; a 400 is never retried
            client.chat(bad)
    assert "400" in str(exc.value) and "sk-secret" not in str(exc.value)


def test_trickling_target_times_out_per_attempt_not_per_read():
    """One byte every 0.15 s never trips a per-read timeout; the total deadline ends each attempt."""
    target = HostileTarget("trickle", interval_s=0.15)
    try:
        retry = RetryPolicy(tries=2, timeout_s=0.5, backoff_s=0.2)
        client = OpenAIClient(target.url, "m", retry=retry)
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as exc:
            client.chat([{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t0
        assert "Timeout" in str(exc.value) and target.url not in str(exc.value)
        assert retry.worst_case_s() == pytest.approx(1.2)  # 2 x 0.5 s + one 0.2 s wait
        assert 1.0 <= elapsed < retry.worst_case_s() + 1.0
        assert len(target.requests) == 2
    finally:
        target.close()


def test_redirect_is_not_followed_with_the_key(monkeypatch):
    recorder = HostileTarget("record")
    redirect = HostileTarget("redirect", location=recorder.url + "/v1/chat/completions")
    monkeypatch.setenv("PRP_TEST_KEY", "sk-secret-123")
    try:
        client = OpenAIClient(redirect.url, "m", api_key_env="PRP_TEST_KEY", retry=RetryPolicy(tries=3))
        with pytest.raises(RemoteError) as exc:
            client.chat([{"role": "user", "content": "hi"}])
        assert "302" in str(exc.value) and "not followed" in str(exc.value)
        assert len(redirect.requests) == 1  # not retried either
        assert redirect.requests[0]["authorization"] == "Bearer sk-secret-123"  # sent to the configured host only
        assert recorder.requests == []  # the key never travelled to the new host
        direct = OpenAIClient(recorder.url, "m", retry=RetryPolicy(tries=1))
        assert direct.chat([{"role": "user", "content": "hi"}]).text == "42"
    finally:
        recorder.close()
        redirect.close()


def test_client_retries_drops_and_503s_of_a_real_server(faulty_canned):
    client = OpenAIClient(faulty_canned, "m", retry=RetryPolicy(tries=6, timeout_s=5, backoff_s=0.01))
    answers = [client.chat([{"role": "user", "content": "hi"}]) for _ in range(20)]
    assert all(a.text == "42" for a in answers)
    assert sum(a.attempts for a in answers) > 20  # some first attempts were dropped or refused


def test_response_size_is_capped():
    target = HostileTarget("huge", size=3 * 1024 * 1024)
    try:
        client = OpenAIClient(target.url, "m", retry=RetryPolicy(tries=2, timeout_s=10), max_response_bytes=1 << 20)
        with pytest.raises(RemoteError) as exc:
            client.chat([{"role": "user", "content": "hi"}])
        assert "larger than" in str(exc.value) and len(target.requests) == 1  # not retried
    finally:
        target.close()


@pytest.mark.slow
def test_router_server_answers_through_fallback_when_target_trickles(pair):
    """route.py --serve in front of a trickling target: the draft answers within timeout x tries
    + backoff + 5 s, the response never shows the target's address, and /health reflects the worker."""
    target = HostileTarget("trickle", interval_s=0.5)
    proc, url = start(["route.py", "--serve", "--port", "0", "--draft", str(pair["draft"]), "--target", target.url,
                       "--mode", "drl", "--rating", "forced", "--threshold", "2", "--max-new-tokens", "3",
                       "--timeout", "1", "--tries", "2", "--backoff", "0.1", "--threads", "1"])
    try:
        t0 = time.monotonic()
        status, body, _ = post(url, chat_body("What is the sum?", png_bytes()), timeout=60)
        elapsed = time.monotonic() - t0
        assert status == 200, body
        meta = body["prp"]
        assert meta["route"] == "target" and meta["fallback"] and meta["answered_by"] == "draft"
        assert elapsed < 1 * 2 + 0.1 + 5
        shown = json.dumps(body)
        assert target.url not in shown and target.url.rsplit(":", 1)[1] not in shown
    finally:
        stop(proc)
        target.close()


def _completion(usage=None, **fields) -> bytes:
    body = {"model": "t", "choices": [{"message": {"content": "42"}}], **fields}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


# what a misbehaving target sent (issue 26, finding 4): each must end in RemoteError, so the draft answers
BAD_REPLIES = {
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads
    "deep_in_an_object": b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "tokens_as_string": _completion({"completion_tokens": "5"}),
    "tokens_nan": _completion().replace(b'"model"', b'"usage": {"completion_tokens": NaN}, "model"'),
    "tokens_infinite": _completion().replace(b'"model"', b'"usage": {"completion_tokens": 1e999}, "model"'),
    "tokens_negative": _completion({"completion_tokens": -1}),
    "tokens_bool": _completion({"completion_tokens": True}),
    "tokens_float": _completion({"completion_tokens": 2.0}),
    "usage_a_list": _completion([1]),
    "choices_an_object": json.dumps({"choices": {"0": {"message": {"content": "x"}}}}).encode(),
    "content_a_number": json.dumps({"choices": [{"message": {"content": 7}}]}).encode(),
    "message_a_string": json.dumps({"choices": [{"message": "hi"}]}).encode(),
    "not_an_object": b"[1, 2]",
    "a_string": b'"hello"',
}


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_a_misbehaving_target_is_a_remote_error(name):
    target = HostileTarget("reply", body=BAD_REPLIES[name])
    try:
        client = OpenAIClient(target.url, "m", retry=RetryPolicy(tries=2, timeout_s=10, backoff_s=0.01))
        with pytest.raises(RemoteError) as exc:
            client.chat([{"role": "user", "content": "hi"}])
        assert "malformed response" in str(exc.value) and target.url not in str(exc.value)
        assert len(target.requests) == 1  # not retried: the same body would come again
    finally:
        target.close()


def test_good_replies_are_read_with_their_types():
    for body, expected in ((_completion({"completion_tokens": 3}), ("42", "t", 3)),
                           (_completion(), ("42", "t", None)),
                           (json.dumps({"model": {"x": 1}, "choices": [{"message": {"content": None}}]}).encode(),
                            ("", "m", None))):  # a model that is not a string: the configured name
        target = HostileTarget("reply", body=body)
        try:
            answer = OpenAIClient(target.url, "m", retry=RetryPolicy(tries=1)).chat([{"role": "user", "content": "q"}])
            assert (answer.text, answer.model, answer.completion_tokens) == expected
        finally:
            target.close()


def test_any_failure_of_the_client_is_the_drafts_fallback():
    """Whatever the client raises (a bug, a RecursionError it did not catch) is a fallback, never a 500."""
    from prp.route.router import Query

    class Broken:
        model, retry = "t", RetryPolicy(tries=1)

        def chat(self, messages, *, max_tokens=None):
            raise RecursionError("maximum recursion depth exceeded")

    answer = RemoteTarget(Broken()).answer_one(Query(id="q", question="?", image=None))
    assert answer.text is None and "RecursionError" in answer.error


@pytest.mark.slow
def test_router_server_falls_back_when_the_target_sends_nan(pair):
    """usage.completion_tokens: NaN was a plain-text 500 (JSON) or `NaN` inside a 200 event stream."""
    target = HostileTarget("reply", body=BAD_REPLIES["tokens_nan"])
    proc, url = start(["route.py", "--serve", "--port", "0", "--draft", str(pair["draft"]), "--target", target.url,
                       "--mode", "drl", "--rating", "forced", "--threshold", "2", "--max-new-tokens", "3",
                       "--timeout", "5", "--tries", "1", "--threads", "1"])
    try:
        def strict(text):
            return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))

        status, body, _ = post(url, chat_body("What is the sum?", png_bytes()), timeout=120)
        assert status == 200, body
        assert body["prp"]["route"] == "target" and body["prp"]["fallback"] and body["prp"]["answered_by"] == "draft"
        status, streamed, _ = post(url, {**chat_body("What is the sum?"), "stream": True}, timeout=120)
        events = [line[len("data: "):] for line in streamed["raw"].split("\n") if line.startswith("data: {")]
        assert status == 200 and events and all(strict(e)["object"] == "chat.completion.chunk" for e in events)
        assert strict(events[-1])["prp"]["fallback"]
    finally:
        stop(proc)
        target.close()
