"""The policy being trained: model + processor + optimizer + scheduler (+ the DeepSpeed engine),
its forward/backward and update (steps 7-8 of Alg. 1 / 2), and its checkpoints.

fp32 weights always: AdamW steps of ~1e-7 vanish in bf16 (most bf16 weights never change); bf16 is
the compute dtype (autocast, or DeepSpeed's bf16 with its fp32 master copy).
"""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prp.core.adapters import adapter_base, has_processor, is_adapter_dir
from prp.core.batches import TrainBatch, completion_logprobs
from prp.core.modeling import freeze_vision_biases
from prp.core.prompts import CN_TOKEN, UN_TOKEN
from prp.train import checkpoint as ckpt_io
from prp.train import lora
from prp.train.config import ConfigError, TrainConfig
from prp.train.dist import Dist, ds_config_for
from prp.train.loss import prp_loss
from prp.train.modes import Objective, StepKind, get_mode

log = logging.getLogger("prp.train")


class NonFiniteError(ConfigError):
    """The loss or the weights became NaN/inf: training stops before anything is saved (the fix is in the
    config: a lower learning rate), one line and exit status 2 from train.py."""


def resolve_model(spec: str, *, what: str = "model") -> str:
    """A model folder from `spec`:
    - a training run's output dir (holds ckpt-N folders, e.g. `runs/grpo`) -> its latest checkpoint;
    - a Hugging Face model folder or a LoRA adapter folder (prp.core.adapters) -> itself.
    (`tiny:<size>` specs are built into folders by train.py before training starts.)
    """
    path = Path(spec)
    # a run folder first: it holds a config.json too (the resolved training config, not a model's)
    latest = ckpt_io.latest_checkpoint(path)
    if latest is not None:
        return str(latest)
    if (path / "config.json").is_file() or is_adapter_dir(path):
        return spec
    raise ConfigError(f"{what} {spec}: not a model folder (no config.json) nor a run folder with ckpt-N "
                            f"checkpoints; pass --{what.replace('_', '-')} DIR (a local Hugging Face model folder, "
                            "or a finished run's output dir such as runs/grpo)")


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up over warmup_ratio * total_steps, then constant / linear / cosine decay."""
    warmup = int(cfg.warmup_ratio * total_steps)

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 1.0 - progress) if cfg.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return fn


@dataclass
class Policy:
    model: torch.nn.Module  # the HF module (engine.module under DeepSpeed)
    engine: Any | None  # deepspeed.DeepSpeedEngine, or None for plain torch
    processor: Any
    tok: Any
    eos_id: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    ds_hook: Any = None  # HfDeepSpeedConfig: must stay alive while ZeRO-3 builds / saves the model
    peft: Any = None  # the PeftModel around `model` when LoRA trains (lora_rank > 0); checkpoints hold its adapter
    lora_base: str | None = None  # the base model folder under the adapter

    @property
    def net(self) -> torch.nn.Module:
        return self.engine if self.engine is not None else self.model


def build_policy(cfg: TrainConfig, path: str, *, d: Dist, device: torch.device, total_steps: int) -> Policy:
    """The policy from a model folder or a LoRA adapter folder (a LoRA run's checkpoint, or a run that starts
    from one: e.g. the swift JRL recipe from a LoRA-DRL run).  With `lora_rank`, an adapter's weights are the
    starting adapter; without, it is merged and every weight trains."""
    from prp.core.modeling import load_model, load_processor, set_pixel_bounds

    ds_config = ds_config_for(cfg, d.world) if d.deepspeed else None
    ds_hook = None
    if d.deepspeed:
        from transformers.integrations import HfDeepSpeedConfig

        ds_hook = HfDeepSpeedConfig(ds_config)  # alive while from_pretrained runs: builds the model partitioned
    adapter = path if is_adapter_dir(path) else None
    if adapter is not None and not cfg.lora_rank and d.deepspeed:
        raise ConfigError(f"{path} is a LoRA adapter: full training under DeepSpeed starts from a model folder; "
                          f"export the merged model first (python -m prp.commands.export {path} --out DIR) and pass "
                          "--model DIR, or train with the lora: block")
    base = adapter_base(adapter) if adapter is not None and cfg.lora_rank else path
    model, processor = load_model(base, device=None if d.deepspeed else device, dtype=torch.float32,
                                  trust_remote_code=cfg.trust_remote_code, merge=True)
    if adapter is not None and has_processor(adapter):
        processor = load_processor(adapter, trust_remote_code=cfg.trust_remote_code)
    set_pixel_bounds(processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    tok = processor.tokenizer
    if get_mode(cfg.mode).step is StepKind.SFT_CN:
        tok.add_tokens([CN_TOKEN, UN_TOKEN], special_tokens=True)
        if len(tok) > model.get_input_embeddings().num_embeddings:
            if cfg.lora_rank:  # an adapter cannot carry new embedding rows: it would no longer fit its base
                raise ConfigError(f"sft-cn adds [CN]/[UN] beyond the embedding table of {base} "
                                  f"({model.get_input_embeddings().num_embeddings} rows): train it without LoRA")
            model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    if cfg.freeze_vision_biases:
        freeze_vision_biases(model)  # requires_grad is not saved: re-applied on every load
    wrapped = None
    if cfg.lora_rank:  # App. D: only the adapter trains; everything below sees the same Hugging Face model
        wrapped = lora.attach(model, cfg, base=base, adapter=adapter)
        if d.main:
            log.info("%s", lora.describe(model))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    # Built on the torch optimizer: DeepSpeed's ZeRO wrapper keeps using its param_groups, and the
    # engine steps the scheduler at accumulation boundaries; plain torch steps it in optimizer_step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    engine = None
    if d.deepspeed:
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                       config=ds_config)
        model = engine.module
    return Policy(model=model, engine=engine, processor=processor, tok=tok,
                  eos_id=tok.convert_tokens_to_ids(tok.eos_token), optimizer=optimizer, scheduler=scheduler,
                  device=device, ds_hook=ds_hook, peft=wrapped, lora_base=base if wrapped is not None else None)


def forward_backward(policy: Policy, batch: TrainBatch, weights: torch.Tensor, objective: Objective, *,
                     temperature: float, accumulation: int, bf16: bool, d: Dist) -> float:
    """Step 7: log-probs of the completion tokens, the loss, backward (scaled for accumulation)."""
    autocast = (torch.autocast(policy.device.type, dtype=torch.bfloat16)
                if bf16 and policy.engine is None else nullcontext())
    with autocast:
        logp = completion_logprobs(policy.net, batch, temperature=temperature)  # [B, L]
    if objective is Objective.PG:
        # Eq. 2/7/8 with ratio = pi/pi_old = 1 numerically (pi_old = detached pi): single update.
        loss = prp_loss(logprobs=logp, token_weights=weights).loss
    else:
        loss = -(logp * weights).sum() / weights.sum().clamp(min=1.0)
    if d.any(not bool(torch.isfinite(loss.detach()))):  # every rank stops (no rank left waiting in a collective)
        raise NonFiniteError(f"the loss is {loss.item()}")
    if policy.engine is not None:
        # DeepSpeed divides by the accumulation steps itself and counts micro-steps in step():
        # it must be called after every backward, and only updates at the boundary.
        policy.engine.backward(loss)
        policy.engine.step()
    else:
        (loss / accumulation).backward()
    return loss.item()


def optimizer_step(policy: Policy, max_grad_norm: float) -> float:
    """Step 8: one update per `gradient_accumulation_steps` rollouts; returns the gradient norm."""
    if policy.engine is not None:  # the engine already stepped at the boundary (forward_backward)
        raw = policy.engine.get_global_grad_norm()  # None before the first boundary
        norm = float(raw) if raw is not None else float("nan")
        if raw is not None and not math.isfinite(norm):  # the same global norm on every rank: all stop
            raise NonFiniteError(f"the gradient norm is {norm}")
        return norm
    params = [p for p in policy.model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if not math.isfinite(grad_norm):  # stop before the update: the weights are still the last good ones
        raise NonFiniteError(f"the gradient norm is {grad_norm}")
    try:
        policy.optimizer.step()
    except RuntimeError as exc:  # AdamW's step size lr / bias correction overflows float (lr near 1e38)
        if "overflow" in str(exc):
            raise NonFiniteError(f"the update overflows ({exc})") from exc
        raise
    policy.optimizer.zero_grad(set_to_none=True)
    policy.scheduler.step()
    bad = first_nonfinite(policy.model.named_parameters())  # one cheap pass; DeepSpeed's are checked at save
    if bad is not None:
        raise NonFiniteError(f"weight {bad} became non-finite in the update")
    return grad_norm


@torch.no_grad()
def first_nonfinite(tensors) -> str | None:
    """The name of the first tensor with a NaN/inf in (name, tensor) pairs, else None."""
    for name, t in tensors:
        if t is not None and t.is_floating_point() and t.numel() and not torch.isfinite(t).all():
            return name
    return None


def load_training_state(policy: Policy, point: ckpt_io.ResumePoint) -> int:
    """Optimizer / scheduler / RNG state of a checked checkpoint into the policy (DeepSpeed's files through
    the safe loader); returns the step to continue from."""
    return ckpt_io.restore(point, optimizer=policy.optimizer, scheduler=policy.scheduler, engine=policy.engine)


def save_checkpoint(policy: Policy, out: Path, step: int, *, d: Dist, trainer_state: dict, keep_last: int,
                    settings: dict | None = None) -> Path:
    """An atomic ckpt-<step> (prp.train.checkpoint); refuses to write weights with a NaN/inf in them.
    A LoRA run's checkpoint holds its adapter instead of the model (prp.train.lora.save).
    `settings`: the model's prp.json (prp.core.recipe.write_settings' keywords), written beside config.json."""
    tmp = out / f"ckpt-{step}.tmp"
    if d.main:
        tmp = ckpt_io.tmp_dir(out, step)
    d.barrier()
    state_dict = None
    if policy.engine is not None:
        policy.engine.save_checkpoint(str(tmp / "ds"), tag="ds")  # partitioned optimizer state, all ranks
        # full weights on rank 0; a LoRA run gathers only its adapter (the frozen base never changes)
        state_dict = policy.engine._zero3_consolidated_16bit_state_dict(
            exclude_frozen_parameters=policy.peft is not None)
    bad = None
    if d.main:
        named = state_dict.items() if state_dict is not None else policy.model.named_parameters()
        bad = first_nonfinite((n, t.detach()) for n, t in named)
    if d.any(bad is not None):
        if d.main:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        raise NonFiniteError(f"weight {bad or '(on rank 0)'} is not finite at step {step}")
    if d.main:
        if policy.peft is not None:  # the adapter only (adapter_config.json + adapter_model.safetensors)
            lora.save(policy.peft, tmp, state_dict)
        else:
            policy.model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        policy.processor.save_pretrained(tmp)
        if settings is not None:
            from prp.core.recipe import write_settings

            write_settings(tmp, **settings)
        ckpt_io.write_state(tmp, trainer_state=trainer_state,
                            optimizer=policy.optimizer if policy.engine is None else None,
                            scheduler=policy.scheduler)
    d.barrier()
    final = out / f"ckpt-{step}"
    if d.main:
        final = ckpt_io.commit(tmp, keep_last=keep_last)
        log.info("saved %s", final)
        from prp.train.logs import test_marker

        test_marker(f"prp-checkpoint {step}")
    d.barrier()
    return final


__all__ = ["NonFiniteError", "Policy", "build_policy", "forward_backward", "load_training_state", "lr_lambda",
           "optimizer_step", "resolve_model", "save_checkpoint"]
