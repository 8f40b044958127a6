"""What an instance cache was written with, so a resume never mixes rows of different runs.

eval.py resumes `<out-dir>/instances.jsonl` by default.  Rows are keyed by record, so without this a
rerun with another draft, target, P1 / P2 model or scoring flag (or the same folder with rebuilt
weights) would keep the old rows and pool two runs in one report.  The settings that shape a row are
written next to the cache (`instances.settings.json`) and a resume must match them.

A local model is identified by its resolved path and the size and mtime of its weight and config
files (no hashing: a 15 GB checkpoint would take minutes to read); a URL by itself.
"""
from __future__ import annotations

import json
from pathlib import Path

from prp.core.adapters import adapter_base, is_adapter_dir
from prp.core.cli import UserError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json", "adapter_config.json")


def model_identity(spec: str | None) -> dict | str | None:
    """A model's identity for the cache: None, a URL as given, or a local dir's path and files.

    >>> model_identity("http://127.0.0.1:8000/v1")
    'http://127.0.0.1:8000/v1'
    """
    if spec is None or "://" in str(spec):
        return spec
    root = Path(spec).resolve()
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in root.glob(pattern) if p.is_file()})
    stats = {p.name: p.stat() for p in files}  # one stat per file
    identity = {"path": str(root), "files": {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}}
    if is_adapter_dir(root):  # a LoRA adapter: the base it names is part of what wrote the rows
        try:
            identity["base"] = model_identity(adapter_base(root))
        except UserError:  # no base named: --base-model must be given, and is recorded beside
            identity["base"] = None
    return identity


def settings_path(cache: str | Path) -> Path:
    cache = Path(cache)
    return cache.with_name(cache.stem + ".settings.json")


def check_cache_settings(cache: str | Path, settings: dict, *, resume: bool) -> None:
    """Refuse to resume a cache written with other settings; then record this run's.

    A cache with rows but no settings file (written by an older version, or by hand) is refused too:
    nothing says its rows belong to this run.  Without `resume` the cache starts afresh anyway.
    """
    cache, meta = Path(cache), settings_path(cache)
    settings = json.loads(json.dumps(settings))  # the JSON form, as it will be read back
    has_rows = cache.exists() and cache.stat().st_size > 0
    if resume and has_rows:
        hint = f"evaluate into a new --out-dir or pass --no-resume (it starts {cache} afresh)"
        if not meta.exists():
            raise SystemExit(f"{cache}: no {meta.name} says which models and settings wrote its rows; {hint}")
        try:
            old = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{meta}: unreadable ({exc}); {hint}") from None
        changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
        if changed:
            raise SystemExit(f"{cache} was written with other settings ({', '.join(changed)} differ); {hint}")
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
