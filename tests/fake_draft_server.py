"""A small OpenAI-compatible chat server for tests: a REAL local draft behind the chat API as vLLM
serves it (127.0.0.1, port 0, stdlib http.server).

What it does as vLLM does (measured facts: docs/deploy.md): string contents become a list of text
parts before the chat template runs (`strings_to_parts`, vLLM's 'openai' content format),
`continue_final_message` / `add_generation_prompt` go to `apply_chat_template`, `stop` strings cut the
text (kept with `include_stop_str_in_output`), greedy decoding at temperature 0, and
`logprobs.content[*].top_logprobs` from the model's full-vocabulary log-softmax.  Knobs make it lack a
feature: `logprobs=False` (no log-probabilities), `top_cap=N` (at most N alternatives),
`continuation=False` (continue_final_message ignored).
"""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image

from prp.route import decode as gen


class FakeDraftServer:
    def __init__(self, model, processor, *, name: str = "draft", logprobs: bool = True, top_cap: int = 20,
                 continuation: bool = True, strings_to_parts: bool = True):
        self.model, self.processor, self.name = model, processor, name
        self.logprobs, self.top_cap, self.continuation, self.strings_to_parts = (
            logprobs, top_cap, continuation, strings_to_parts)
        self.lock = threading.Lock()  # one generation at a time on the model
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, answer = server.answer(body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ the model side
    def _messages(self, messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
        out, images = [], []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}] if self.strings_to_parts else content
            else:
                parts = []
                for part in content:
                    if part["type"] == "text":
                        parts.append({"type": "text", "text": part["text"]})
                    else:
                        raw = base64.b64decode(part["image_url"]["url"].split(";base64,", 1)[1])
                        images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
                        parts.append({"type": "image"})
                content = parts
            out.append({"role": m["role"], "content": content})
        return out, images

    def render(self, body: dict) -> tuple[str, list[Image.Image]]:
        messages, images = self._messages(body["messages"])
        cont = bool(body.get("continue_final_message")) and self.continuation
        text = self.processor.apply_chat_template(
            messages, tokenize=False, continue_final_message=cont,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)) and not cont)
        return text, images

    @torch.no_grad()
    def answer(self, body: dict) -> tuple[int, dict]:
        k = int(body.get("top_logprobs") or 0)
        if k > 20:
            return 400, {"error": {"message": "top_logprobs > --max-logprobs 20"}}
        text, images = self.render(body)
        tok = self.processor.tokenizer
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt",
                                return_mm_token_type_ids=True)
        eos = gen.eos_ids_of(self.model, tok)
        stops = body.get("stop") or []
        with self.lock:
            state, logits = gen.prefill(self.model, inputs)
            ids, entries, finish, stop_reason = [], [], "length", None
            for _ in range(int(body["max_tokens"])):
                logp = torch.log_softmax(logits[0].double(), -1)
                chosen = int(logp.argmax())
                entry = {"token": tok.decode([chosen]), "logprob": float(logp[chosen])}
                if k:
                    values, idx = logp.topk(min(k, self.top_cap))
                    entry["top_logprobs"] = [{"token": tok.decode([int(i)]), "logprob": float(v)}
                                             for v, i in zip(values, idx, strict=True)]
                if chosen in eos:  # vLLM lists the end-of-sequence token's log-probability too, not its text
                    entries.append(entry)
                    finish = "stop"
                    break
                ids.append(chosen)
                entries.append(entry)
                out = tok.decode(ids, skip_special_tokens=True)
                hit = next((s for s in stops if s in out), None)
                if hit:
                    finish, stop_reason = "stop", hit
                    break
                logits = gen.step(self.model, state, torch.tensor([chosen]), torch.tensor([True]), 0)
        content = tok.decode(ids, skip_special_tokens=True)
        if stop_reason:
            cut = content.index(stop_reason)
            content = content[: cut + (len(stop_reason) if body.get("include_stop_str_in_output") else 0)]
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                  "stop_reason": stop_reason,
                  "logprobs": {"content": entries} if (self.logprobs and body.get("logprobs")) else None}
        usage = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "completion_tokens": len(entries)}
        return 200, {"id": "fake", "object": "chat.completion", "model": self.name, "choices": [choice],
                     "usage": usage}


class SilentServer:
    """Accepts connections and never answers (a hung draft): bounded by the client's deadline."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        for conn in self.held:
            conn.close()
        self.sock.close()


def refused_url() -> str:
    """A loopback port nothing listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
