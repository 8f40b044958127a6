"""Remote targets against REAL HTTP servers (subprocesses): retries, fallback, and `route.py --serve`."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from route_fixtures import build_queries

from prp.route import run as route_run
from prp.core.modeling import load_model
from prp.route.remote import OpenAIClient, RemoteError, RetryPolicy, chat_messages
from prp.route.router import RemoteTarget, Router, RouterConfig
from prp.toy.synthetic import render
from prp.route.decide import BatchFraction

ROOT = Path(__file__).resolve().parents[1]






def _start(args: list[str], env_extra: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server process; wait for its 'listening on URL' line; return (process, URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.wait(timeout=5)
    raise RuntimeError(f"server exited with {proc.returncode} before listening")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def faulty_server(pair):
    """The tiny target behind prp.route.serve, failing 30% of requests (503 / dropped / too slow)."""
    proc, url = _start(["-m", "prp.route.serve", "--model", str(pair["target"]), "--port", "0", "--max-new-tokens", "4",
                        "--name", "tiny-target"],
                       {"PRP_SERVE_FAULTS": "rate=0.3,kinds=503+close+timeout,delay=0.6,seed=1"})
    yield url
    _stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _many_queries(tmp_path: Path, n: int) -> Path:
    """n query lines reusing 10 rendered images (rendering 200 PNGs is not what is under test)."""
    base = build_queries(tmp_path / "imgs", 10)
    lines = base.read_text().splitlines()
    out = tmp_path / "many.jsonl"
    with out.open("w") as f:
        for i in range(n):
            rec = json.loads(lines[i % 10])
            rec["id"], rec["image"] = f"q{i:03d}", str(base.parent / rec["image"])
            f.write(json.dumps(rec) + "\n")
    return out


def _remote_router(pair, url: str, *, tries: int, timeout_s: float) -> Router:
    model, proc = load_model(pair["draft"])
    client = OpenAIClient(url, "tiny-target", retry=RetryPolicy(tries=tries, timeout_s=timeout_s, backoff_s=0.01),
                          max_tokens=4)
    cfg = RouterConfig(mode="drl", rating="forced", max_new_tokens=3)
    return Router(model, proc, RemoteTarget(client, concurrency=8), cfg)


def test_remote_with_injected_failures_loses_nothing(pair, faulty_server, tmp_path):
    data = _many_queries(tmp_path, 200)
    router = _remote_router(pair, faulty_server, tries=5, timeout_s=0.3)
    rows = route_run.route_file(router, data, tmp_path / "out.jsonl", BatchFraction(1.0), batch_size=50)
    assert sorted(r["id"] for r in rows) == [f"q{i:03d}" for i in range(200)]
    assert all(r["route"] == "target" for r in rows)
    answered = [r for r in rows if not r["fallback"]]
    fell_back = [r for r in rows if r["fallback"]]
    assert all(r["answered_by"] == "tiny-target" and r["error"] is None for r in answered)
    assert all(r["answered_by"] == "draft" and r["error"] and r["text"] for r in fell_back)
    assert sum(r["target_attempts"] for r in rows) > 230  # the faults did happen, and were retried
    assert len(answered) >= 190


def test_refused_connection_falls_back_to_draft(pair, tmp_path):
    data = _many_queries(tmp_path, 6)
    router = _remote_router(pair, f"http://127.0.0.1:{_free_port()}", tries=2, timeout_s=1.0)
    rows = route_run.route_file(router, data, tmp_path / "out.jsonl", BatchFraction(0.5), batch_size=6)
    routed = [r for r in rows if r["route"] == "target"]
    assert len(rows) == 6 and len(routed) == 3
    for r in routed:
        assert r["fallback"] and r["answered_by"] == "draft" and "Refused" in r["error"]
        assert r["text"].startswith(r["prefix"])  # the draft continued its own prefix
    assert not any(r["fallback"] for r in rows if r["route"] == "draft")


def test_client_does_not_retry_4xx_and_never_leaks_key(faulty_server, monkeypatch):
    monkeypatch.setenv("PRP_TEST_KEY", "sk-secret-123")
    client = OpenAIClient(faulty_server, "m", api_key_env="PRP_TEST_KEY", retry=RetryPolicy(tries=3, backoff_s=0.01))
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]
    with pytest.raises(RemoteError) as exc:
        for _ in range(20):  # the server may inject a 503 first; a 400 is never retried
            client.chat(bad)
    assert "400" in str(exc.value) and "sk-secret" not in str(exc.value)


def test_router_serve_endpoint(pair):
    proc, url = _start(["route.py", "--serve", "--port", "0", "--draft", str(pair["draft"]),
                        "--target", str(pair["target"]), "--mode", "jrl", "--rating", "forced", "--pt", "0.5",
                        "--max-new-tokens", "3", "--batch-window-ms", "200", "--threads", "1"])
    try:
        body = {"model": "prp", "messages": chat_messages("What is the sum of the numbers in the image?",
                                                           render([3, 4]))}
        results: list[dict] = []

        def ask():
            req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                results.append(json.loads(resp.read()))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
        for r in results:
            meta = r["prp"]
            assert r["object"] == "chat.completion" and isinstance(r["choices"][0]["message"]["content"], str)
            assert meta["route"] in ("draft", "target") and meta["d"] is not None and meta["t"] is not None
            assert r["model"] == meta["answered_by"] and (r["model"] == "draft") == (meta["route"] == "draft")
        # the four concurrent requests were routed as one batch: --pt 0.5 sent two to the target
        assert sorted(r["prp"]["route"] for r in results) == ["draft", "draft", "target", "target"]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
    finally:
        _stop(proc)


def test_url_and_fault_spec_parsing():
    from prp.route.remote import completions_url
    from prp.route.serve import parse_faults

    assert completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    f = parse_faults("rate=0.5,kinds=503+close,delay=1,seed=3")
    assert f == {"rate": 0.5, "kinds": ["503", "close"], "delay": 1.0, "seed": 3}
    with pytest.raises(ValueError):
        parse_faults("bogus=1")
