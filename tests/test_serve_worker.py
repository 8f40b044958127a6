"""The model worker on its own: isolation of a bad item, cancellation of queued work, health."""
from __future__ import annotations

import threading
import time

import pytest

from prp.route.isolate import run_isolated
from prp.route.server.worker import QueueFull, Worker


def _fail_on_bad(items):
    if "bad" in items:
        raise ValueError("bad item")
    return [f"ok:{x}" for x in items]


def test_isolation_fails_only_the_bad_item_and_counts_calls():
    calls = []

    def fn(items):
        calls.append(list(items))
        return _fail_on_bad(items)

    out = run_isolated(fn, ["a", "b", "bad", "d"])
    assert out[:2] == ["ok:a", "ok:b"] and isinstance(out[2], ValueError) and out[3] == "ok:d"
    # the whole batch, then halves [a, b] (ok) and [bad, d] (fails), then [bad] and [d]
    assert calls == [["a", "b", "bad", "d"], ["a", "b"], ["bad", "d"], ["bad"], ["d"]]
    assert run_isolated(fn, []) == []


def test_worker_batches_isolates_and_answers_every_job():
    worker = Worker(_fail_on_bad, batch_size=8, window_s=0.2)
    futures = [worker.submit(x) for x in ["a", "bad", "c"]]
    assert futures[0].result(timeout=10) == "ok:a" and futures[2].result(timeout=10) == "ok:c"
    with pytest.raises(ValueError):
        futures[1].result(timeout=10)
    h = worker.health()
    assert h["status"] == "ok" and h["failed_items"] == 1


def test_cancelled_job_is_dropped_before_any_work():
    seen, gate = [], threading.Event()

    def slow(items):
        seen.extend(items)
        gate.wait(5)
        return items

    worker = Worker(slow, batch_size=1, window_s=0.0)
    first = worker.submit("first")
    time.sleep(0.2)  # "first" is running and blocks the worker
    second, third = worker.submit("second"), worker.submit("third")
    assert second.cancel()  # its client left while it was queued
    gate.set()
    assert first.result(timeout=5) == "first" and third.result(timeout=5) == "third"
    assert seen == ["first", "third"] and worker.health()["cancelled"] == 1


def test_queue_bound_and_stalled_health():
    gate = threading.Event()

    def blocked(items):
        gate.wait(5)
        return items

    worker = Worker(blocked, batch_size=1, window_s=0.0, max_queue=1, stall_s=0.2)
    worker.submit(1)
    time.sleep(0.1)
    worker.submit(2)  # waits in the queue (size 1)
    with pytest.raises(QueueFull):
        worker.submit(3)
    time.sleep(0.3)
    assert worker.health()["status"] == "stalled"
    gate.set()
    time.sleep(0.2)
    assert worker.health()["status"] == "ok"


def test_serving_and_batch_code_never_unpickle_or_eval():
    """What reads client bytes (servers, remote client, batch files, image opening) never imports a
    deserializer that runs code (pickle and its kin) and never calls torch.load / eval / exec."""
    import ast
    from pathlib import Path

    import prp

    root = Path(prp.__file__).parent
    files = [*sorted((root / "route").glob("*.py")), *sorted((root / "route" / "server").glob("*.py")),
             root / "core" / "data.py", root / "serve.py"]
    unsafe_modules = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in unsafe_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in unsafe_modules:
                found.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
                    found.append(f"{path.name}: {f.id}()")
                if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) \
                        and f.value.id in ("torch", "pickle", "yaml"):
                    found.append(f"{path.name}: {f.value.id}.load()")
    assert len(files) > 15 and not found, found


def test_many_empty_messages_cannot_slip_past_the_prompt_limit(tok):
    """The chat template adds tokens per message: 1,000 empty messages cost 64 + 8 * 1000 = 8,064 tokens
    by the count, over a 4,096 limit (before the fix they counted as the 64-token margin alone)."""
    from types import SimpleNamespace

    from prp.route.server.chat import ParsedChat, RequestError, check_prompt_tokens

    processor = SimpleNamespace(tokenizer=tok)
    empty = [{"role": "user", "content": []}] * 1000
    with pytest.raises(RequestError) as err:
        check_prompt_tokens(ParsedChat(messages=empty, images=[], question="", max_tokens=1), processor, 4096)
    assert err.value.status == 400 and "1000 messages" in str(err.value)
    two = [{"role": "user", "content": [{"type": "text", "text": "12"}]}] * 2  # "12\n12": 5 tokens here
    n = check_prompt_tokens(ParsedChat(messages=two, images=[], question="12", max_tokens=1), processor, 4096)
    assert n == len(tok("12\n12", add_special_tokens=False)["input_ids"]) + 64 + 2 * 8
