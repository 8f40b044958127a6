"""Small OpenAI-compatible /v1/chat/completions servers (stdlib http.server), both directions.

    python -m prp.route.serve --model DIR --port 8001        # a local HF model as a target endpoint
    python route.py --serve --port 8000 ...             # the router itself (see `serve_router`)

Requests: {"model", "messages": [{"role", "content": str | [{"type": "text", "text"},
{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}], "max_tokens"}.
Only data URLs are accepted for images (these machines have no internet; fetching URLs is a
security decision a deployment should make, not a demo).  Binds 127.0.0.1 unless told otherwise.

TEST-ONLY fault injection: the env var PRP_SERVE_FAULTS="rate=0.3,kinds=503+close+timeout,
delay=2,seed=0" makes the model server fail a share of requests (503, a dropped connection, or a
reply after `delay` seconds), so the router's retry/fallback path runs against a real server.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


def decode_data_url(url: str) -> Image.Image:
    if not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("only base64 data URLs are accepted for images")
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=False)
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decode failure is the client's
        raise BadRequest(f"unreadable image: {type(exc).__name__}") from None


def parse_chat(body: dict) -> tuple[list[dict], list[Image.Image], str]:
    """OpenAI messages -> (processor-style messages, images in order, text of the last user turn)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    out, images, last_user_text = [], [], ""
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise BadRequest("each message needs a role")
        content = m.get("content", "")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    url = part.get("image_url")
                    images.append(decode_data_url(url.get("url", "") if isinstance(url, dict) else str(url)))
                    parts.append({"type": "image"})
                else:
                    raise BadRequest(f"unsupported content part {kind!r}")
        else:
            raise BadRequest("content must be a string or a list of parts")
        out.append({"role": m["role"], "content": parts})
        if m["role"] == "user":
            last_user_text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    return out, images, last_user_text


def completion_body(text: str, *, model: str, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, extra: dict | None = None) -> dict:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0)},
    }
    if extra:
        body.update(extra)
    return body


class ChatHandler(BaseHTTPRequestHandler):
    """Routes GET /health, GET /v1/models, POST /v1/chat/completions to `self.server.app`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: one line per request at debug level
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.app.name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": "not found"}})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            fault = self.server.app.fault()
            if fault == "close":  # drop the connection without a reply
                self.close_connection = True
                return
            if fault == "503":
                self._send(503, {"error": {"message": "injected fault"}})
                return
            if fault == "timeout":
                time.sleep(self.server.app.faults["delay"])
            self._send(200, self.server.app.complete(body))
        except BadRequest as exc:
            self._send(400, {"error": {"message": str(exc)}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout): nothing to answer
        except Exception as exc:
            log.exception("request failed")
            self._send(500, {"error": {"message": type(exc).__name__}})


def parse_faults(spec: str | None) -> dict:
    """'rate=0.3,kinds=503+close+timeout,delay=2,seed=0' -> dict (TEST-ONLY)."""
    faults = {"rate": 0.0, "kinds": ["503"], "delay": 2.0, "seed": 0}
    for item in filter(None, (spec or "").split(",")):
        key, _, value = item.partition("=")
        if key == "kinds":
            faults["kinds"] = value.split("+")
        elif key in ("rate", "delay"):
            faults[key] = float(value)
        elif key == "seed":
            faults[key] = int(value)
        else:
            raise ValueError(f"unknown fault option {key!r}")
    return faults


class ModelApp:
    """A local HF model behind the chat endpoint; one request at a time on the model."""

    def __init__(self, model_dir: str | None, *, name: str | None = None, max_new_tokens: int = 256,
                 canned: str | None = None, faults: dict | None = None):
        self.name = name or (os.path.basename(str(model_dir).rstrip("/")) if model_dir else "canned")
        self.max_new_tokens, self.canned = max_new_tokens, canned
        self.faults = faults or parse_faults(None)
        self._rng = random.Random(self.faults["seed"])
        self._lock = threading.Lock()
        self.model = self.processor = None
        if canned is None:
            from prp.core.modeling import load_model

            self.model, self.processor = load_model(model_dir)

    def fault(self) -> str | None:
        with self._lock:
            if self.faults["rate"] and self._rng.random() < self.faults["rate"]:
                return self._rng.choice(self.faults["kinds"])
        return None

    def complete(self, body: dict) -> dict:
        messages, images, _ = parse_chat(body)
        max_tokens = min(int(body.get("max_tokens") or self.max_new_tokens), self.max_new_tokens)
        if self.canned is not None:  # load tests of the HTTP path: no model at all
            return completion_body(self.canned, model=self.name, completion_tokens=0)
        from prp.route import decode as gen
        from prp.core.modeling import prepare_inputs

        with self._lock:
            inputs = prepare_inputs(self.processor, [messages], [images] if images else None, device=self.model.device)
            tokens = gen.generate(self.model, self.processor.tokenizer, inputs, max_new_tokens=max_tokens)[0]
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return completion_body(text, model=self.name, prompt_tokens=int(inputs["input_ids"].shape[1]),
                               completion_tokens=len(tokens))


class RouterApp:
    """The router behind the chat endpoint.  Concurrent requests are micro-batched (up to
    `batch_size`, waiting at most `window_s` for more) and routed together: the batch is what
    Dynamic Pre-scoring (Sec. 4.4 b, `--pt`) ranks within."""

    def __init__(self, router, policy, *, batch_size: int = 8, window_s: float = 0.02):
        self.router, self.policy, self.batch_size, self.window_s = router, policy, batch_size, window_s
        self.name = "prp-router"
        self.faults = parse_faults(None)
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()

    def fault(self) -> None:
        return None

    def _worker(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                rows = self.router.route_batch([q for q, _ in batch], self.policy)
                for (_, slot), row in zip(batch, rows):
                    slot.put(row)
            except Exception as exc:
                log.exception("routing a batch failed")
                for _, slot in batch:
                    slot.put(exc)

    def complete(self, body: dict) -> dict:
        from prp.route.router import Query

        _, images, question = parse_chat(body)
        if len(images) > 1:
            raise BadRequest("the router takes at most one image per query")
        slot: queue.Queue = queue.Queue(maxsize=1)
        self._queue.put((Query(id=uuid.uuid4().hex, question=question, image=images[0] if images else None), slot))
        row = slot.get()
        if isinstance(row, Exception):
            raise row
        meta = {k: row.get(k) for k in ("route", "answered_by", "d", "t", "ipr_d", "ipr_t", "score", "fallback",
                                        "error", "prefix", "prefix_latency_s", "draft_latency_s",
                                        "target_latency_s", "latency_s", "prefix_tokens")}
        return completion_body(row["text"] or "", model=row["answered_by"],
                               completion_tokens=row["completion_tokens"], extra={"prp": meta})


def make_server(app, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), ChatHandler)
    server.daemon_threads = True
    server.app = app
    return server


def serve_forever(app, host: str, port: int) -> None:
    server = make_server(app, host, port)
    # the "listening" line is what scripts (and tests) wait for; it carries the real port
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible chat completions for a local HF model.")
    ap.add_argument("--model", help="HF model dir (required unless --canned)")
    ap.add_argument("--name", help="model name reported in responses (default: the dir name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001, help="0 = any free port (printed)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="cap on max_tokens")
    ap.add_argument("--canned", help="answer this text without a model (HTTP load tests)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    if not args.model and args.canned is None:
        ap.error("--model is required unless --canned is given")
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    faults = parse_faults(os.environ.get("PRP_SERVE_FAULTS"))
    if faults["rate"]:
        log.warning("TEST-ONLY fault injection on: %s", faults)
    app = ModelApp(args.model, name=args.name, max_new_tokens=args.max_new_tokens, canned=args.canned, faults=faults)
    serve_forever(app, args.host, args.port)


if __name__ == "__main__":
    main()
