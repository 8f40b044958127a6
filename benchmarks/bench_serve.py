"""N concurrent clients against the served router on the embedded default (loopback only), calm or hostile.

    python benchmarks/bench_serve.py [--clients 16] [--requests 200] [--max-seconds 300] [--threads 1]
    python benchmarks/bench_serve.py --scenarios calm,big,idle,hostile   # + the hostile runs (issue 26)

Starts `route.py --serve --port 0 --pt 0.5` (the shipped demo draft + target; per-batch share
routed to the target 0.5) as a subprocess on 127.0.0.1, or uses `--url` (a loopback server you
started).  `--clients` threads share `--requests` requests (the demo's test questions and images,
as data URLs), each client waiting for its answer before sending the next (closed loop), all
stopped after `--max-seconds`.  Reports requests/s, p50 / p99 latency, errors by kind, the share
the router sent to the target, and the server's peak RSS during the run (VmHWM from /proc, reset
at the start of each run; only for a server this script started).

Scenarios (run in the order given, against one server):
    calm     the closed loop above
    big      `--big-clients` x `--big-requests` requests of one solid 4096 x 4096 PNG (78 KB on the wire,
             64 MiB decoded); a 503 is retried after its Retry-After (at most 20 tries a request)
    idle     `--idle-sockets` TCP connections that send nothing, re-opened as the server closes them,
             while /health is probed every 0.25 s for `--idle-seconds`: its status and latency
    hostile  the calm run again, beside 8 big-image clients, the idle sockets and 2 clients each sending
             bodies of 200,000 empty messages (6.6 MB): the calm clients' p99 against the calm run's
Bounded: at most 256 clients, 10,000 requests, 1,000 idle sockets, loopback only.  Not a test:
numbers depend on the machine, which is printed.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import resource
import socket
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

MAX_IDLE_SOCKETS = 1000
HEADERS = {"Content-Type": "application/json"}


def machine() -> str:
    return f"{platform.machine()} ({os.cpu_count()} logical CPUs), {platform.python_implementation()} " \
           f"{platform.python_version()}"


def chat_bytes(image_png: bytes | None, question: str) -> bytes:
    content = [{"type": "text", "text": question}]
    if image_png is not None:
        url = "data:image/png;base64," + base64.b64encode(image_png).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return json.dumps({"model": "prp", "messages": [{"role": "user", "content": content}]}).encode()


def demo_bodies(n: int) -> list[bytes]:
    """Up to `n` distinct request bodies from the shipped demo's test split."""
    data = ROOT / "demo" / "data" / "test.jsonl"
    bodies = []
    for line in data.read_text().splitlines()[:n]:
        rec = json.loads(line)
        bodies.append(chat_bytes((data.parent / rec["image"]).read_bytes(), rec["question"]))
    return bodies


def big_image_body() -> bytes:
    """One solid 4096 x 4096 PNG: ~78 KB on the wire, 64 MiB once decoded (issue 26, finding 1)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), (200, 30, 30)).save(buf, format="PNG")
    return chat_bytes(buf.getvalue(), "What is the sum of the numbers in the image?")


def huge_messages_body(n: int = 200_000) -> bytes:
    """200,000 empty messages, 6.6 MB (issue 26, finding 3): refused, but only after parsing."""
    return json.dumps({"model": "prp", "messages": [{"role": "user", "content": ""}] * n}).encode()


def start_router(threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "route.py", "--serve", "--port", "0", "--pt", "0.5",
                             "--threads", str(threads), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    raise SystemExit(f"the router did not start (exit status {proc.wait()})")


class PeakRSS:
    """The server's peak resident memory over one run: VmHWM, reset at the start (clear_refs 5,
    Linux >= 4.0); where it cannot be reset, VmRSS sampled every 20 ms instead."""

    def __init__(self, pid: int | None):
        self.pid, self._samples, self._stop = pid, [0], threading.Event()
        self._reset = False

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> PeakRSS:
        if self.pid is None:
            return self
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._samples.append(self._status("VmRSS"))

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def mib(self) -> float | None:
        if self.pid is None:
            return None
        peak = self._status("VmHWM") if self._reset else max(self._samples)
        return round(peak / 2**20, 1)

    def rss_mib(self) -> float | None:
        return None if self.pid is None else round(self._status("VmRSS") / 2**20, 1)


def run_clients(url: str, bodies: list[bytes], *, clients: int, requests: int, max_seconds: float,
                retry_503: int = 0, stop: threading.Event | None = None) -> dict:
    """Closed-loop clients; `retry_503`: tries of a request answered 503 (after its Retry-After)."""
    parts = urlsplit(url)
    next_index, lock = [0], threading.Lock()
    latencies: list[float] = []
    errors: Counter = Counter()
    routes: Counter = Counter()
    retries = [0]
    stop_at = time.monotonic() + max_seconds

    def over() -> bool:
        return time.monotonic() >= stop_at or (stop is not None and stop.is_set())

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max_seconds)  # keep-alive
        while not over():
            with lock:
                i = next_index[0]
                if i >= requests:
                    break
                next_index[0] += 1
            t0 = time.perf_counter()
            for attempt in range(retry_503 + 1):
                try:
                    conn.request("POST", "/v1/chat/completions", body=bodies[i % len(bodies)], headers=HEADERS)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status == 503 and attempt < retry_503 and not over():
                        with lock:
                            retries[0] += 1
                        if resp.getheader("connection", "").lower() == "close":
                            conn.close()
                        time.sleep(float(resp.getheader("retry-after") or 1))
                        continue
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
                break
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

    out = {
        "clients": clients, "requests_sent": next_index[0], "ok": len(lat), "errors": dict(errors),
        "wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall, 2) if wall else None,
        "p50_s": round(pct(0.50), 3) if lat else None, "p99_s": round(pct(0.99), 3) if lat else None,
        "mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "share_routed": round(routes["target"] / len(lat), 3) if lat else None,
    }
    if retry_503:
        out["retried_503"] = retries[0]
    return out


class IdleSockets:
    """`n` TCP connections that send nothing; each one the server closes is opened again (at most
    `n` x 50 opens in all), so `n` are held for the whole run."""

    def __init__(self, url: str, n: int):
        self.addr = (urlsplit(url).hostname, urlsplit(url).port)
        self.n, self.opened, self.closed_by_server = n, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self) -> IdleSockets:
        self._thread.start()
        return self

    def _connect(self) -> socket.socket | None:
        if self.opened >= self.n * 50:
            return None
        self.opened += 1
        try:
            s = socket.create_connection(self.addr, timeout=5)
            s.setblocking(False)
            return s
        except OSError:
            return None

    def _hold(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for _ in range(self.n):
            if (s := self._connect()) is not None:
                sel.register(s, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                try:
                    gone = key.fileobj.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.closed_by_server += 1
                    if (s := self._connect()) is not None:
                        sel.register(s, selectors.EVENT_READ)
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def held(self) -> int:
        return self.opened - self.closed_by_server

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def probe_health(url: str, seconds: float, every_s: float = 0.25) -> dict:
    """GET /health every `every_s` for `seconds` (new connection each): statuses and latency."""
    parts = urlsplit(url)
    statuses: Counter = Counter()
    lat: list[float] = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] += 1
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
        lat.append(time.perf_counter() - t0)
        time.sleep(max(0.0, every_s - (time.perf_counter() - t0)))
    lat.sort()
    return {"probes": len(lat), "statuses": {str(k): v for k, v in statuses.items()},
            "p50_s": round(lat[len(lat) // 2], 3) if lat else None, "max_s": round(lat[-1], 3) if lat else None}


def huge_senders(url: str, clients: int, stop: threading.Event) -> dict:
    """`clients` threads posting 200,000-message bodies until `stop`; their statuses."""
    body, statuses, lock = huge_messages_body(), Counter(), threading.Lock()
    parts = urlsplit(url)

    def send() -> None:
        for _ in range(1000):  # bounded
            if stop.is_set():
                return
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                conn.request("POST", "/v1/chat/completions", body=body, headers=HEADERS)
                resp = conn.getresponse()
                resp.read()
                key = resp.status
                conn.close()
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__
            with lock:
                statuses[str(key)] += 1

    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return {"threads": threads, "statuses": statuses}


def scenario_big(url: str, proc, args) -> dict:
    with PeakRSS(proc and proc.pid) as mem:
        out = run_clients(url, [big_image_body()], clients=args.big_clients, requests=args.big_requests,
                          max_seconds=args.max_seconds, retry_503=20)
    return {**out, "peak_rss_mib": mem.mib(), "rss_after_mib": mem.rss_mib()}


def scenario_idle(url: str, proc, args) -> dict:
    with PeakRSS(proc and proc.pid) as mem, IdleSockets(url, args.idle_sockets) as idle:
        time.sleep(1.0)  # all opened
        held_at_start = idle.held()
        health = probe_health(url, args.idle_seconds)
        chat = run_clients(url, demo_bodies(4), clients=2, requests=4, max_seconds=60)
    return {"idle_sockets": args.idle_sockets, "held_at_start": held_at_start, "opened": idle.opened,
            "closed_by_server": idle.closed_by_server, "health": health,
            "chat_during": {k: chat[k] for k in ("ok", "errors", "p50_s")}, "peak_rss_mib": mem.mib()}


def scenario_hostile(url: str, proc, args, bodies: list[bytes]) -> dict:
    stop = threading.Event()
    big_body = [big_image_body()]
    parts = set(args.hostile_parts.split(","))
    with PeakRSS(proc and proc.pid) as mem, IdleSockets(url, args.idle_sockets if "idle" in parts else 0) as idle:
        huge = huge_senders(url, 2 if "huge" in parts else 0, stop)
        big_result: dict = {}
        big = threading.Thread(target=lambda: big_result.update(run_clients(
            url, big_body, clients=8, requests=10_000 if "big" in parts else 0, max_seconds=args.max_seconds,
            retry_503=20, stop=stop)))
        big.start()
        health_result: dict = {}
        health = threading.Thread(target=lambda: health_result.update(probe_health(url, args.idle_seconds)))
        health.start()
        time.sleep(1.0)
        normal = run_clients(url, bodies, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds)
        stop.set()
        big.join()
        health.join()
        for t in huge["threads"]:
            t.join(60)
        held = idle.held()
    return {"normal": normal, "big_image_clients": {k: big_result.get(k) for k in
                                                    ("ok", "errors", "retried_503", "requests_per_s")},
            "huge_message_statuses": dict(huge["statuses"]), "idle_sockets_held_at_end": held,
            "health": health_result, "peak_rss_mib": mem.mib()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the router process")
    ap.add_argument("--url", help="a router already serving on loopback (default: start one)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra route.py flag (repeatable)")
    ap.add_argument("--scenarios", default="calm", help="comma-separated: calm, big, idle, hostile")
    ap.add_argument("--big-clients", type=int, default=32)
    ap.add_argument("--big-requests", type=int, default=64)
    ap.add_argument("--idle-sockets", type=int, default=520)
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="how long /health is probed (idle, hostile)")
    ap.add_argument("--hostile-parts", default="big,idle,huge",
                    help="what runs beside the calm clients in the hostile scenario (to see each one's cost)")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 10_000 and 0 < args.max_seconds <= 3600
            and 1 <= args.big_clients <= 256 and 1 <= args.big_requests <= 10_000
            and 1 <= args.idle_sockets <= MAX_IDLE_SOCKETS and 0 < args.idle_seconds <= 600):
        ap.error(f"bounded: 1-256 clients, 1-10,000 requests, at most 3600 s, 1-{MAX_IDLE_SOCKETS} idle sockets")
    if unknown := set(scenarios) - {"calm", "big", "idle", "hostile"}:
        ap.error(f"unknown scenarios: {sorted(unknown)}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if {"idle", "hostile"} & set(scenarios) and soft < args.idle_sockets + 256:
        ap.error(f"ulimit -n is {soft}: too few for {args.idle_sockets} idle sockets plus the clients")
    from prp.route.server.limits import is_loopback

    if args.url and not is_loopback(urlsplit(args.url).hostname or ""):
        ap.error("--url must be a loopback address (this benchmark never sends traffic off the machine)")
    bodies = demo_bodies(min(args.requests, 100))
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_router(args.threads, args.server_arg)
    result: dict = {"ulimit_n": soft}
    try:
        run_clients(url, bodies, clients=min(4, args.clients), requests=4, max_seconds=60)  # warm-up
        if proc is not None:
            result["rss_idle_mib"] = PeakRSS(proc.pid).rss_mib()
        for name in scenarios:
            if name == "calm":
                with PeakRSS(proc and proc.pid) as mem:
                    result["calm"] = run_clients(url, bodies, clients=args.clients, requests=args.requests,
                                                 max_seconds=args.max_seconds)
                result["calm"]["peak_rss_mib"] = mem.mib()
            elif name == "big":
                result["big"] = scenario_big(url, proc, args)
            elif name == "idle":
                result["idle"] = scenario_idle(url, proc, args)
            else:
                result["hostile"] = scenario_hostile(url, proc, args, bodies)
            print(json.dumps({name: result[name]}), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    if "calm" in result and "hostile" in result and result["calm"]["p99_s"] and result["hostile"]["normal"]["p99_s"]:
        result["hostile_p99_over_calm"] = round(result["hostile"]["normal"]["p99_s"] / result["calm"]["p99_s"], 2)
    result["machine"] = machine()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
