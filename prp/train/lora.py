"""Training a LoRA adapter instead of every weight (the paper's App. D), for every mode.

Only which parameters train changes: the rollouts, rewards, per-token advantage maps, DSS and the loss
(Eq. 2-8) are the same code.  `attach` wraps the policy's Hugging Face model with peft's LoRA layers on the
language model's projections (`lora_target_modules`; the vision tower stays frozen unless `lora_vision`),
every other weight frozen; the Hugging Face model object stays the one the trainer, the rollout and
DeepSpeed see, so one process and ZeRO-3 run the same path.  A checkpoint then holds the adapter only
(prp.train.policy.save_checkpoint): adapter_config.json + adapter_model.safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from prp.core.adapters import ADAPTER_WEIGHTS, INSTALL_HINT, read_adapter_config
from prp.train.config import ConfigError, TrainConfig

VISION_SCOPE = ".visual."  # Qwen2.5-VL: model.visual.* is the vision tower (blocks and merger)


def target_module_names(model: torch.nn.Module, cfg: TrainConfig) -> list[str]:
    """Full names of the Linear layers LoRA adapts: last name component in `lora_target_modules`, inside
    the language model (and the vision tower with `lora_vision`).  Full names, so peft cannot also pick the
    vision tower's own `gate_proj` / `up_proj` / `down_proj` by suffix."""
    wanted = set(cfg.lora_modules)
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
             and (cfg.lora_vision or VISION_SCOPE not in f".{name}.")]
    if not names:
        raise ConfigError(f"lora_target_modules {cfg.lora_target_modules!r} matches no Linear layer of the model "
                          "(Qwen2.5-VL's language model: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    return names


def attach(model: torch.nn.Module, cfg: TrainConfig, *, base: str, adapter: str | Path | None = None):
    """Wrap `model` (modified in place) with fresh LoRA layers, or with `adapter`'s trained weights (a resume,
    or a run started from an adapter); every other parameter frozen.  Returns the PeftModel."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"lora_rank {cfg.lora_rank} needs {INSTALL_HINT}") from None
    names = target_module_names(model, cfg)
    config = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=names, bias="none")
    wrapped = peft.get_peft_model(model, config)
    # the base folder resolved, so the adapter finds it from any working directory (--base-model overrides)
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    if adapter is not None:
        load_weights(wrapped, cfg, adapter)
    return wrapped


def check_same_adapter(cfg: TrainConfig, adapter: str | Path) -> None:
    """An adapter continues to train only under the LoRA settings it was trained with (rank and alpha set
    the update's scale; its weights say nothing about alpha)."""
    saved = read_adapter_config(adapter)
    ours = {"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}
    differ = [f"{k} {saved.get(k)} vs {v}" for k, v in ours.items() if saved.get(k) is None or
              float(saved[k]) != float(v)]
    if differ:
        raise ConfigError(f"the adapter {adapter} was trained with other LoRA settings ({', '.join(differ)} in this "
                          "config); set the lora: block to the adapter's values (its adapter_config.json)")


def load_weights(wrapped, cfg: TrainConfig, adapter: str | Path) -> None:
    """The trained A / B of `adapter` into `wrapped`'s LoRA layers; every layer of either side must match."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_same_adapter(cfg, adapter)
    weights = load_file(str(Path(adapter) / ADAPTER_WEIGHTS))
    ours = {k for k in wrapped.state_dict() if ".lora_" in k}
    try:
        result = set_peft_model_state_dict(wrapped, weights)
    except RuntimeError as exc:  # a shape mismatch
        raise ConfigError(f"the adapter {adapter} does not fit this model ({str(exc).splitlines()[0]})") from None
    missing = sorted(k for k in result.missing_keys if k in ours)
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise ConfigError(f"the adapter {adapter} adapts other layers than lora_target_modules "
                          f"{cfg.lora_target_modules!r} ({what}); use the modules it was trained with")


def adapter_state_dict(wrapped, full_state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft's file layout; `full_state_dict`: the Hugging Face model's (DeepSpeed's
    gathered weights, keyed like `model.state_dict()`), else the live parameters."""
    from peft import get_peft_model_state_dict

    prefixed = None
    if full_state_dict is not None:
        prefixed = {f"base_model.model.{k}": v for k, v in full_state_dict.items()}
    state = get_peft_model_state_dict(wrapped, state_dict=prefixed)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save(wrapped, folder: Path, full_state_dict: dict | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors into `folder` (peft's layout: PeftModel.from_pretrained
    and vLLM's --lora-modules read it)."""
    from safetensors.torch import save_file

    save_file(adapter_state_dict(wrapped, full_state_dict), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    wrapped.peft_config["default"].save_pretrained(str(folder))  # adapter_config.json


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """{"total": every parameter, "trainable": those with requires_grad} (ZeRO-3: the full shapes)."""
    total = trainable = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", p.numel()))
        total += n
        trainable += n if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


def describe(model: torch.nn.Module) -> str:
    c = count_parameters(model)
    return f"LoRA: {c['trainable']:,} of {c['total']:,} parameters train ({100 * c['trainable'] / c['total']:.2f}%)"


def base_identity(base: str | Path) -> dict:
    """What a resume checks the base model against: its resolved path and the size of each weight / config file
    (a changed base under the same adapter would silently train a different model)."""
    root = Path(base).resolve()
    files = sorted(p for pattern in ("*.safetensors", "config.json") for p in root.glob(pattern) if p.is_file())
    return {"path": str(root), "files": {p.name: p.stat().st_size for p in files}}


__all__ = ["adapter_state_dict", "attach", "base_identity", "check_same_adapter", "count_parameters", "describe",
           "load_weights", "save", "target_module_names"]
