"""N concurrent clients against the served router on the embedded default (loopback only).

    python benchmarks/bench_serve.py [--clients 16] [--requests 200] [--max-seconds 300] [--threads 1]

Starts `route.py --serve --port 0 --pt 0.5` (the shipped demo draft + target; per-batch share
routed to the target 0.5) as a subprocess on 127.0.0.1, or uses `--url` (a loopback server you
started).  `--clients` threads share `--requests` requests (the demo's test questions and images,
as data URLs), each client waiting for its answer before sending the next (closed loop), all
stopped after `--max-seconds`.  Reports requests/s, p50 / p99 latency, errors by kind, and the
share the router sent to the target.  Bounded: at most 256 clients and 10,000 requests, loopback
only.  Not a test: numbers depend on the machine, which is printed.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # prp importable without an install: imported inside main()


def machine() -> str:
    return f"{platform.machine()} ({os.cpu_count()} logical CPUs), {platform.python_implementation()} " \
           f"{platform.python_version()}"


def demo_bodies(n: int) -> list[bytes]:
    """Up to `n` distinct request bodies from the shipped demo's test split."""
    data = ROOT / "demo" / "data" / "test.jsonl"
    bodies = []
    for line in data.read_text().splitlines()[:n]:
        rec = json.loads(line)
        image = base64.b64encode((data.parent / rec["image"]).read_bytes()).decode()
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                   {"type": "text", "text": rec["question"]}]
        bodies.append(json.dumps({"model": "prp", "messages": [{"role": "user", "content": content}]}).encode())
    return bodies


def start_router(threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "route.py", "--serve", "--port", "0", "--pt", "0.5",
                             "--threads", str(threads), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    raise SystemExit(f"the router did not start (exit status {proc.wait()})")


def run_clients(url: str, bodies: list[bytes], *, clients: int, requests: int, max_seconds: float) -> dict:
    parts = urlsplit(url)
    next_index, lock = [0], threading.Lock()
    latencies: list[float] = []
    errors: Counter = Counter()
    routes: Counter = Counter()
    stop_at = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max_seconds)  # keep-alive
        while time.monotonic() < stop_at:
            with lock:
                i = next_index[0]
                if i >= requests:
                    break
                next_index[0] += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                elapsed = time.perf_counter() - t0
                if resp.status == 200:
                    with lock:
                        latencies.append(elapsed)
                        routes[json.loads(data)["prp"]["route"]] += 1
                else:
                    with lock:
                        errors[f"HTTP {resp.status}"] += 1
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max_seconds)
        conn.close()

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    return {
        "clients": clients, "requests_sent": next_index[0], "ok": len(lat), "errors": dict(errors),
        "wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall, 2) if wall else None,
        "p50_s": round(pct(0.50), 3) if lat else None, "p99_s": round(pct(0.99), 3) if lat else None,
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "share_routed": round(routes["target"] / len(lat), 3) if lat else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the router process")
    ap.add_argument("--url", help="a router already serving on loopback (default: start one)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra route.py flag (repeatable)")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 10_000 and 0 < args.max_seconds <= 3600):
        ap.error("bounded: 1-256 clients, 1-10,000 requests, at most 3600 s")
    from prp.route.server.limits import is_loopback

    if args.url and not is_loopback(urlsplit(args.url).hostname or ""):
        ap.error("--url must be a loopback address (this benchmark never sends traffic off the machine)")
    bodies = demo_bodies(min(args.requests, 100))
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_router(args.threads, args.server_arg)
    try:
        run_clients(url, bodies, clients=min(4, args.clients), requests=4, max_seconds=60)  # warm-up
        result = run_clients(url, bodies, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result["machine"] = machine()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
