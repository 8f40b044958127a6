"""`prp.json`: what a trained model folder needs for routing and for further training.

A model folder (a `ckpt-N` of train.py, an export of scripts/build_demo.py) carries `prp.json` beside
its `config.json`:

    {"mode": "jrl",                 # the training mode: drl / jrl set route.py's prompt and prefix grammar
     "rating": "forced",            # how route.py / eval.py read its rating prefix (free / forced)
     "max_new_tokens": 48,          # the answer budget it was trained (or is routed) with
     "recipe": "configs/demo/jrl.yaml",   # the config it came from
     "train": {"max_completion_length": 64, ...}}   # its recipe's values that differ from the built-in defaults

route.py and eval.py take `mode`, `rating` and `max_new_tokens` from the draft's prp.json where no flag
gives them; train.py starts from `train` when `--model` has one and no `--config` is given.  Each prints
one line of the settings in effect when they differ from the generic defaults, so a tiny model is never
silently run with the paper's full-scale settings (issue 27 item 4).  Light: no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "prp.json"
ROUTING_MODES = ("drl", "jrl")  # the modes whose models write a rating prefix
# route.py / eval.py without a flag or a prp.json (prp.route.flags.build_router's fallbacks)
ROUTE_DEFAULTS = {"mode": "jrl", "rating": "free", "max_new_tokens": 1024}
ROUTE_FLAGS = {"mode": "--mode", "rating": "--rating", "max_new_tokens": "--max-new-tokens"}
# TrainConfig fields a recipe does not hand on: where a run reads and writes, how long it runs, test hooks
NOT_INHERITED = frozenset({
    "mode", "model", "target_model", "target_base_url", "target_api_key_env", "train_data", "data_format",
    "image_root", "max_records", "acc_tgt_cache", "cn_cache", "output_dir", "max_steps", "num_epochs", "save_every",
    "resume_weights_only", "step_delay_s", "report_to", "deepspeed_config", "trust_remote_code",
})


def read_settings(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The folder's prp.json, or None (no folder, no file, a URL).  A malformed file raises ValueError
    naming it: it was written for this model, so a damaged one must not be silently ignored."""
    if not model_dir or "://" in str(model_dir):
        return None
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; fix or delete it")
    return data


def write_settings(model_dir: str | Path, *, mode: str, rating: str, max_new_tokens: int, recipe: str,
                   train: dict[str, Any]) -> Path:
    """Write `model_dir`/prp.json (see the module docstring)."""
    if rating not in ("free", "forced"):
        raise ValueError(f"rating {rating!r}: free or forced")
    data = {"mode": mode, "rating": rating, "max_new_tokens": int(max_new_tokens), "recipe": recipe,
            "train": dict(sorted(train.items()))}
    path = Path(model_dir) / FILE
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def recipe_values(cfg_dict: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The config values a model hands on to a run that starts from it: those that differ from the
    built-in defaults, without paths, run length and test hooks (NOT_INHERITED).

    >>> recipe_values({"mode": "drl", "max_completion_length": 64, "alpha": 1.5}, {"max_completion_length": 2048,
    ...                "alpha": 1.5, "mode": "drl"})
    {'max_completion_length': 64}
    """
    return {k: v for k, v in cfg_dict.items() if k not in NOT_INHERITED and k in defaults and v != defaults[k]}


def route_settings(args, *, prog: str) -> str | None:
    """Fill `args.mode`, `args.rating`, `args.max_new_tokens` (None: not given on the command line) from
    the draft's prp.json, else ROUTE_DEFAULTS.  Returns the one line to print when the settings in effect
    differ from the generic defaults (None otherwise).

    >>> from types import SimpleNamespace
    >>> a = SimpleNamespace(draft=None, mode=None, rating="forced", max_new_tokens=None)
    >>> route_settings(a, prog="route.py"), a.mode, a.max_new_tokens
    ('route.py: settings in effect: --rating forced (flag); generic defaults: --rating free', 'jrl', 1024)
    """
    saved = read_settings(args.draft) or {}
    if saved.get("mode") not in ROUTING_MODES:  # a GRPO / SFT model writes no rating: nothing to route with
        saved = {k: v for k, v in saved.items() if k != "mode"}
    sources = {}
    for key, default in ROUTE_DEFAULTS.items():
        if getattr(args, key) is not None:
            sources[key] = "flag"
        elif saved.get(key) is not None:
            setattr(args, key, saved[key])
            sources[key] = "prp.json"
        else:
            setattr(args, key, default)
            sources[key] = "default"
    differ = [k for k in ROUTE_DEFAULTS if getattr(args, k) != ROUTE_DEFAULTS[k]]
    if not differ:
        return None
    where = (f"from {Path(args.draft) / FILE}" + (f", recipe {saved['recipe']}" if saved.get("recipe") else "")
             if saved else "")
    groups = []
    for source in ("prp.json", "flag", "default"):
        flags = " ".join(f"{ROUTE_FLAGS[k]} {getattr(args, k)}" for k in differ if sources[k] == source)
        if flags:
            groups.append(f"{flags} ({where if source == 'prp.json' else source})")
    generic = " ".join(f"{ROUTE_FLAGS[k]} {ROUTE_DEFAULTS[k]}" for k in differ)
    return f"{prog}: settings in effect: {', '.join(groups)}; generic defaults: {generic}"
