"""Helpers for tests against the REAL servers: subprocesses on 127.0.0.1, a free port each, raw
HTTP over loopback sockets, and small hostile targets (trickling, redirecting, oversized)."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # model loading on a busy 2-core machine


def start(args: list[str], env_extra: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server; wait (bounded) for its 'listening on URL' line; return (process, URL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server process
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("listening on "):
                found.append(line.split()[-1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not found:
        proc.kill()
        proc.wait()
        err.seek(0)
        raise RuntimeError(f"server did not start (rc {proc.returncode}):\n{err.read()[-3000:]}")
    proc.stderr_file = err  # for debugging a failing test
    return proc, found[0]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def png_bytes(size=(32, 16), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 13000, height: int = 13000) -> bytes:
    """A ~100-byte PNG whose header claims width x height (what a decompression bomb looks like
    before decoding: building a real one would cost the memory the limit protects)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def chat_body(text: str, image: bytes | None = None, **extra) -> dict:
    content: list[dict] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    content.append({"type": "text", "text": text})
    return {"model": "prp", "messages": [{"role": "user", "content": content}], **extra}


def post(url: str, body, *, headers: dict | None = None, timeout: float = 60.0) -> tuple[int, dict, dict]:
    """POST JSON (or raw bytes) with http.client; (status, parsed body or {"raw": text}, headers)."""
    import http.client

    host, port = host_port(url.split("/v1")[0] if "/v1" in url else url)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=raw,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {"raw": data.decode("utf-8", "replace")}
        return resp.status, parsed, dict(resp.getheaders())
    finally:
        conn.close()


def get(url: str, path: str, *, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    import http.client

    host, port = host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def raw_exchange(url: str, payload: bytes, *, wait_s: float = 0.6) -> bytes:
    """Send raw bytes on one connection; return everything the server sends back within wait_s."""
    host, port = host_port(url)
    with socket.create_connection((host, port), timeout=wait_s) as s:
        s.sendall(payload)
        out, deadline = b"", time.monotonic() + wait_s
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


class HostileTarget:
    """A loopback HTTP 'target' in a thread: `trickle` (one byte per `interval_s`, forever),
    `redirect` (302 to `location`), `huge` (a body of `size` bytes), `reply` (200 with `body`, whatever
    it holds), or `record` (answers a valid completion and records the request headers it got)."""

    def __init__(self, kind: str, *, interval_s: float = 0.5, location: str = "", size: int = 0, body: bytes = b""):
        self.kind, self.interval_s, self.location, self.size, self.body = kind, interval_s, location, size, body
        self.requests: list[dict] = []
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn) -> None:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        need = int(headers.get("content-length", "0"))
        while len(body) < need:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        self.requests.append(headers)

    def _serve(self, conn) -> None:
        with conn:
            try:
                self._read_request(conn)
                if self.kind == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b" " * 100000:
                        if self._stop.is_set():
                            return
                        conn.sendall(bytes([byte]))
                        time.sleep(self.interval_s)
                elif self.kind == "redirect":
                    conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\n\r\n"
                                 .encode())
                elif self.kind == "huge":
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                    conn.sendall(head)
                    block = b" " * 65536
                    for _ in range(self.size // len(block) + 1):
                        conn.sendall(block)
                elif self.kind == "reply":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)
                else:
                    body = json.dumps({"model": "recorder", "choices": [{"message": {"content": "42"}}],
                                       "usage": {"completion_tokens": 1}}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def host_header(url: str) -> bytes:
    """The Host header line a loopback server accepts (its name and port; DNS-rebinding guard)."""
    host, port = host_port(url)
    return f"Host: {host}:{port}\r\n".encode()
