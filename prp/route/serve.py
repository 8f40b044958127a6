"""OpenAI-compatible /v1/chat/completions servers (FastAPI + uvicorn, see prp.route.server).

    python -m prp.serve --model DIR --port 8001        # a local HF model as a target endpoint
    python route.py --serve --port 8000 ...            # the router itself (`serve_router`)

Requests: {"model", "messages": [{"role", "content": str | [{"type": "text", "text"},
{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}], "max_tokens",
"stream"}.  Only data URLs are accepted for images (fetching URLs would let clients make the
server connect anywhere).  Binds 127.0.0.1 unless told otherwise; every limit is a flag
(prp.route.server.limits; docs/serving.md).

TEST-ONLY fault injection: the env var PRP_SERVE_FAULTS="rate=0.3,kinds=503+close+timeout,
delay=2,seed=0" makes the model server fail a share of requests (503, a connection dropped
mid-answer, or an answer after `delay` seconds), so a client's retries run against a real server.
"""
from __future__ import annotations

import argparse
import logging
import os

from prp.core.cli import check_port_free, port_number, positive_int, run_main
from prp.route.flags import ENGINE_KINDS
from prp.route.server.backends import ModelBackend, RouterBackend, parse_faults
from prp.route.server.limits import add_limit_arguments, limits_from_args

__all__ = ["main", "parse_faults", "serve_router"]

log = logging.getLogger(__name__)


def _api_key(env_name: str | None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise SystemExit(f"the API key variable {env_name} is empty or unset")
    return key


def _run(backend, limits, *, host: str, port: int, api_key: str | None, window_s: float = 0.0,
         stall_s: float | None = None) -> None:
    from prp.route.server.app import build_app
    from prp.route.server.launch import serve
    from prp.route.server.worker import Worker

    worker = Worker(backend.process, batch_size=backend.batch_size, window_s=window_s, max_queue=limits.max_queue,
                    stall_s=stall_s or limits.request_timeout_s)
    app = build_app(backend, worker, limits, api_key=api_key, bind_host=host)
    serve(app, limits, host, port, api_key_set=api_key is not None)


def serve_router(router, policy, args) -> None:
    """`route.py --serve`: the router behind the endpoint; concurrent requests are micro-batched
    (up to --batch-size, waiting --batch-window-ms for more) and routed as one batch."""
    limits = limits_from_args(args, max_tokens=router.cfg.max_new_tokens)
    backend = RouterBackend(router, policy, limits, batch_size=args.batch_size)
    stall_s = limits.request_timeout_s
    client = getattr(router.target, "client", None)
    if client is not None:  # a remote target: a batch may legitimately wait out every retry
        worst = client.retry.worst_case_s()
        stall_s = max(stall_s, worst + 60)
        if limits.request_timeout_s < worst:
            log.warning("--request-timeout %gs is shorter than the remote target's worst case (%gs = timeout x "
                        "tries + backoff): clients may get a 504 before the draft's fallback",
                        limits.request_timeout_s, worst)
    _run(backend, backend.limits, host=args.host, port=args.port, api_key=_api_key(args.serve_api_key_env),
         window_s=args.batch_window_ms / 1000, stall_s=stall_s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible chat completions for a local HF model.")
    ap.add_argument("--model", help="HF model dir or LoRA adapter folder (required unless --canned)")
    ap.add_argument("--base-model", help="base model of a --model that is a LoRA adapter folder (default: the one "
                    "its adapter_config.json names); the adapter runs unmerged")
    ap.add_argument("--name", help="model name reported in responses (default: the dir name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=port_number, default=8001, help="0 = any free port (printed)")
    ap.add_argument("--max-new-tokens", type=positive_int, default=256, help="cap on (and default of) max_tokens")
    ap.add_argument("--canned", help="answer this text without a model (HTTP load tests)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    ap.add_argument("--engine", choices=ENGINE_KINDS, default=None,
                    help="decode engine: eager (CPU, debugging), static or compiled (default: compiled on CUDA, "
                         "eager elsewhere)")
    ap.add_argument("--api-key-env", default=None,
                    help="NAME of an env var holding the key clients must send (Authorization: Bearer KEY)")
    add_limit_arguments(ap, max_images=4)
    ap.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of a user error")
    args = ap.parse_args(argv)
    if not args.model and args.canned is None:
        ap.error("--model is required unless --canned is given")
    check_port_free(args.host, args.port)  # a port in use: one line now, not after loading the model
    if args.model:  # a canned server never loads torch (it starts in a second)
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    faults = parse_faults(os.environ.get("PRP_SERVE_FAULTS"))
    if faults["rate"]:
        log.warning("TEST-ONLY fault injection on: %s", faults)
    limits = limits_from_args(args, max_tokens=args.max_new_tokens)
    backend = ModelBackend(args.model, limits, name=args.name, canned=args.canned, faults=faults,
                           engine=args.engine, base_model=args.base_model)
    _run(backend, limits, host=args.host, port=args.port, api_key=_api_key(args.api_key_env))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
