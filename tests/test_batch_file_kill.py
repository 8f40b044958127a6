"""The 1,000-line goal: a batch file with 10% poisoned lines, `route.py` killed with SIGKILL
mid-run, then `--resume`: 0 lost and 0 duplicated lines (a real process, a real kill)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from batch_fixtures import write_poisoned_file
from serve_fixtures import ROOT

pytestmark = pytest.mark.slow  # ~1 min on 2 busy cores: two route.py runs over 1,000 lines


def _route(pair, data, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "route.py", "--draft", str(pair["draft"]), "--target", str(pair["target"]),
                             "--data", str(data), "--out", str(out), "--mode", "drl", "--rating", "forced",
                             "--max-new-tokens", "2", "--batch-size", "25", "--pt", "0.5", "--threads", "1", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _lines(out) -> list[bytes]:
    return [x for x in out.read_bytes().split(b"\n") if x.strip()] if out.exists() else []


def test_kill_9_then_resume_loses_and_repeats_no_line(pair, tmp_path):
    data, expected = write_poisoned_file(tmp_path, 1000)
    out = tmp_path / "routes.jsonl"
    proc = _route(pair, data, out)
    deadline = time.monotonic() + 300
    while len(_lines(out)) < 300 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "route.py finished before it could be killed: raise the line count"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 300 <= len(_lines(out)) < 1000
    resumed = _route(pair, data, out, "--resume")
    assert resumed.wait(timeout=300) == 0
    rows = [json.loads(x) for x in _lines(out)]  # every line of the file parses: the torn one was dropped
    assert sorted(r["line"] for r in rows) == list(range(1, 1001))
    errors = {r["line"]: r["error"].split(":")[0] for r in rows if r["error"]}
    assert errors == expected
    assert all(r["route"] in ("draft", "target") for r in rows if r["line"] not in expected)
    # --retry-errors (implies --resume): the error rows are routed again, still one row per line
    assert _route(pair, data, out, "--retry-errors").wait(timeout=300) == 0
    rows = [json.loads(x) for x in _lines(out)]
    assert sorted(r["line"] for r in rows) == list(range(1, 1001))
    assert {r["line"]: r["error"].split(":")[0] for r in rows if r["error"]} == expected
