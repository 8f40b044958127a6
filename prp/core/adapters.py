"""LoRA adapter folders (the paper's App. D: "train a lightweight LoRA on the draft model"), loaded like models.

An adapter folder is what `train.py` writes with `lora:` set, and what `peft` writes:

    adapter_config.json         peft's LoraConfig; `base_model_name_or_path` names the base model folder
    adapter_model.safetensors   the A / B matrices only (a few MB at the 7B shape, rank 16)
    tokenizer + processor files (train.py's checkpoints; absent: the base's are used)

`load_adapter_model` builds base + adapter WITHOUT merging: peft puts a LoRA layer around each adapted
Linear of the same Hugging Face model, so the router, the decode engine (prp.route.decode / engine, which
call the model's own decoder modules) and the servers run it as they run any model; its outputs are the
merged model's up to float rounding (tests/test_lora.py: greedy tokens equal).  `merge_adapter` folds it
in for good (the export command, prp.commands.export).  `peft` is the optional extra `lora`.
"""
from __future__ import annotations

import json
from pathlib import Path

from prp.core.cli import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INSTALL_HINT = "pip install -e .[lora] (the peft package)"


def is_adapter_dir(path: str | Path) -> bool:
    """True for a folder holding adapter_config.json (and, for a model folder, no config.json)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def read_adapter_config(path: str | Path) -> dict:
    file = Path(path) / ADAPTER_CONFIG
    try:
        cfg = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: unreadable ({exc}); give a LoRA adapter folder written by train.py or peft") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{file}: expected a JSON object (peft's LoraConfig)")
    return cfg


def adapter_base(path: str | Path, override: str | None = None) -> str:
    """The base model folder of adapter `path`: `override` (the --base-model flag) when given, else the
    `base_model_name_or_path` its adapter_config.json names."""
    if override:
        return str(override)
    base = read_adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{Path(path) / ADAPTER_CONFIG} names no base model (base_model_name_or_path); "
                        "pass --base-model DIR")
    return str(base)


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def has_processor(path: str | Path) -> bool:
    """True when an adapter folder carries its own processor / tokenizer (train.py's checkpoints do)."""
    return any((Path(path) / name).is_file() for name in PROCESSOR_FILES)


def check_adapter_dir(path: str | Path) -> None:
    p = Path(path)
    if not (p / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; give a LoRA adapter folder written "
                        "by train.py (lora: set) or by peft with safe_serialization")


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError(f"{INSTALL_HINT} is needed to load a LoRA adapter") from None
    return peft


def attach_adapter(model, path: str | Path):
    """`model` (a Hugging Face model, modified in place) with the adapter of `path` around its Linear layers,
    not merged; returns the PeftModel (its `.base_model.model` is `model`)."""
    peft = _peft()
    check_adapter_dir(path)
    try:
        return peft.PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another base model
        raise UserError(f"the adapter {path} does not fit its base model ({str(exc).splitlines()[0]}); "
                        "pass --base-model DIR with the model it was trained on") from None


def merge_adapter(model, path: str | Path):
    """`model` with the adapter of `path` merged into its weights: a plain Hugging Face model again, every
    parameter trainable as from_pretrained leaves it (peft froze them while attached)."""
    merged = attach_adapter(model, path).merge_and_unload()
    merged.requires_grad_(True)
    return merged


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "adapter_base", "attach_adapter", "check_adapter_dir", "has_processor",
           "is_adapter_dir", "merge_adapter", "read_adapter_config"]
