"""The router's command-line flags (route.py, eval.py, `route.py --serve`) and the Router they build.

Importing this module stays cheap (no torch, no transformers): the entry scripts import it to build
their parsers; `build_router` imports the models when it is called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prp.core.cli import non_negative_float, positive_float, positive_int

if TYPE_CHECKING:  # the router pulls in torch + transformers
    from prp.route.router import Router

# `--engine`: how prp.route.decode generates (prp.route.engine.engine_for's kinds; docs/engine.md)
ENGINE_KINDS = ("eager", "compiled", "static")


def add_router_arguments(ap, *, title: str = "models") -> None:
    """The flags route.py and eval.py share: models, the evaluation stage (Sec. 4.2-4.3), a remote target."""
    io = ap.add_argument_group(title)
    io.add_argument("--draft", help="draft (router): a local model dir trained with DRL or JRL, a LoRA adapter folder, "
                                    "or an http(s) base URL of an OpenAI-compatible server with logprobs and "
                                    "continuation (docs/deploy.md)")
    io.add_argument("--base-model", default=None,
                    help="base model of a --draft that is a LoRA adapter folder (default: the one its "
                         "adapter_config.json names); the adapter runs unmerged")
    io.add_argument("--target", help="target: a local HF model dir, or an http(s) base URL (OpenAI-compatible)")
    io.add_argument("--target-model", default=None, help="model name sent to a remote target")
    io.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the env var holding the API key")
    io.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    io.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")
    io.add_argument("--engine", choices=ENGINE_KINDS, default=None,
                    help="decode engine of the draft and a local target: eager (the plain loop; CPU, debugging), "
                         "static (static KV cache, step not compiled) or compiled (default: compiled on CUDA, "
                         "eager elsewhere)")

    sc = ap.add_argument_group("evaluation (Sec. 4.2-4.3)")
    sc.add_argument("--mode", choices=("drl", "jrl"), default=None,
                    help="prompt and prefix grammar: jrl (P_joint, d and t) or drl (P_draft, d only) "
                         "(default: the draft's prp.json, else jrl)")
    sc.add_argument("--rule", choices=("draft_first", "target_first"), default="draft_first",
                    help="JRL score: draft_first s = d + (d - t)/tau, high s stays on the draft; target_first "
                         "s = t + (t - d)/tau, high s goes to the target (DRL: s = d)")
    sc.add_argument("--tau", type=positive_float, default=2.0,
                    help="JRL scale (ignored in DRL); the default 2 is chosen, the paper gives none")
    sc.add_argument("--ipr", choices=("add", "band", "off"), default="add",
                    help="IPR refinement of the ratings (Eq. 9): add d' = d + p (as printed), band: p kept inside "
                         "the rating's 0.01 band, off: raw ratings")
    sc.add_argument("--ipr-backend", default="auto", choices=("auto", "torch", "triton"),
                    help="IPR implementation: auto = the Triton kernel on CUDA, torch elsewhere")
    sc.add_argument("--rating", choices=("free", "forced"), default=None,
                    help="free: the draft writes its prefix; forced: grammar-forced, the draft picks the digits "
                         "(default: the draft's prp.json, else free)")
    sc.add_argument("--max-prefix-tokens", type=positive_int, default=24,
                    help="token budget of the rating prefix; a rating not closed within it is missing (to the target)")
    sc.add_argument("--max-new-tokens", type=positive_int, default=None,
                    help="answer budget of the draft and a local target (default: the draft's prp.json, "
                         "else 1024)")

    rm = ap.add_argument_group("remote target")
    rm.add_argument("--tries", type=positive_int, default=4,
                    help="attempts per remote target request (timeouts, 408/429/5xx, dropped connections) "
                         "before the draft answers instead")
    rm.add_argument("--timeout", type=positive_float, default=60.0,
                    help="seconds per attempt, in all (connect + answer): a query falls back to the draft "
                         "within timeout x tries + backoff")
    rm.add_argument("--backoff", type=non_negative_float, default=0.5, help="first retry wait; doubles each retry")
    rm.add_argument("--concurrency", type=positive_int, default=8,
                    help="requests in flight to a remote target, and to a remote draft")

    rd = ap.add_argument_group("remote draft (--draft URL; docs/deploy.md)")
    rd.add_argument("--draft-model-name", default="draft", help="model name sent to a remote draft")
    rd.add_argument("--draft-api-key-env", default="OPENAI_API_KEY",
                    help="NAME of the env var holding the remote draft's API key")
    rd.add_argument("--draft-timeout", type=positive_float, default=60.0,
                    help="seconds per attempt, in all; a query whose draft fails gets an error row (a 503 served) "
                         "within timeout x tries + backoff")
    rd.add_argument("--draft-tries", type=positive_int, default=4, help="attempts per request to the remote draft")
    rd.add_argument("--draft-backoff", type=non_negative_float, default=0.5,
                    help="first retry wait; doubles each retry")
    rd.add_argument("--draft-top-logprobs", type=int, choices=range(10, 21), metavar="{10..20}", default=20,
                    help="K of top_logprobs at each rating digit (IPR is exact when all ten digits are among them)")
    rd.add_argument("--draft-processor", metavar="DIR", default=None,
                    help="the remote draft's tokenizer/processor files (a model folder; weights are not read): "
                         "counts prompt tokens (needed by --serve) and checks the server's chat template at start")
    rd.add_argument("--no-draft-check", dest="draft_check", action="store_false",
                    help="skip the start-up check of the remote draft's features (logprobs, top-K, continuation)")


def resolve_route_settings(args, *, prog: str) -> None:
    """`--mode`, `--rating`, `--max-new-tokens` not given: the draft's prp.json (prp.core.recipe), else the
    generic defaults; one line on stdout when the settings in effect are not the generic ones."""
    from prp.core.recipe import route_settings

    try:
        line = route_settings(args, prog=prog)
    except ValueError as exc:  # a damaged prp.json: one line naming it
        from prp.core.cli import UserError

        raise UserError(f"--draft {args.draft}: {exc}") from None
    if line:
        print(line, flush=True)


def build_router(args) -> Router:
    """Load the draft and the target named by `add_router_arguments`'s flags and wrap them in a Router."""
    import torch

    from prp.core.modeling import load_model
    from prp.core.recipe import ROUTE_DEFAULTS
    from prp.route.remote import RetryPolicy
    from prp.route.router import Router, RouterConfig
    from prp.route.targets import load_target

    max_new = args.max_new_tokens or ROUTE_DEFAULTS["max_new_tokens"]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = RouterConfig(mode=args.mode or ROUTE_DEFAULTS["mode"], rule=args.rule, tau=args.tau, ipr=args.ipr,
                       ipr_backend=args.ipr_backend, rating=args.rating or ROUTE_DEFAULTS["rating"],
                       max_prefix_tokens=args.max_prefix_tokens, max_new_tokens=max_new)
    if is_url(args.draft):
        from prp.route.remote_draft import load_remote_draft

        draft, processor = load_remote_draft(args, cfg)
    else:
        draft, processor = load_model(args.draft, device=device, dtype=args.dtype, base_model=args.base_model)
    retry = RetryPolicy(tries=args.tries, timeout_s=args.timeout, backoff_s=args.backoff)
    target = load_target(args.target, device=device, dtype=args.dtype, max_new_tokens=max_new, retry=retry,
                         remote_model=args.target_model, api_key_env=args.api_key_env, concurrency=args.concurrency)
    apply_engine(getattr(args, "engine", None), None if getattr(draft, "remote", False) else draft,
                 None if target.remote else target.model)
    return Router(draft, processor, target, cfg)


def is_url(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(("http://", "https://"))


def apply_engine(kind: str | None, *models) -> None:
    """`--engine`: set the decode engine of each model given (None entries skipped); no flag keeps the
    engine's own default (compiled on CUDA, eager elsewhere)."""
    if kind is None:
        return
    from prp.route.engine import set_engine

    for model in models:
        if model is not None:
            set_engine(model, kind)
