"""The PRP training loop: GRPO, DRL (Alg. 1), JRL (Alg. 2), SFT warm start, the [CN]/[UN] baseline, presampling.

One loop for CPU and GPU, one process or many.  Launched with `deepspeed`, the model is built
under ZeRO-3 (HfDeepSpeedConfig before from_pretrained) and stepped by the DeepSpeed engine;
otherwise it is plain torch.  Every optimizer step runs `gradient_accumulation_steps` micro-steps;
a micro-step is one rollout used for exactly one update (the paper's single-update loss: ratio 1,
old log-probs = detached current ones).

Distribution of groups: each rank takes distinct prompts and generates all N completions of
them itself, so a group never spans ranks.  The advantage computation still runs on group
tensors all-gathered from every rank ([G_world, N]) and each rank keeps its own rows: it would be
right even if a group's completions were spread over ranks, the DSS draws are identical on all
ranks (one generator seeded by the step), and the logged metrics are global.

A micro-step of the RL modes (line numbers of Alg. 1 / Alg. 2):
    # step 1: Acc_tgt dictionary, loaded or presampled before training       (Alg. 2 l.1-7)
    # step 2: this rank's prompts x = (P, I, Q)                             (Alg. 1 l.2,  Alg. 2 l.9)
    # step 3: N sampled completions per prompt                              (Alg. 1 l.3,  Alg. 2 l.10)
    # step 4: parse d, t, r; R_fmt + R_acc, Acc_dft, R_dft, R_tgt             (Alg. 1 l.4-8, Alg. 2 l.11-16)
    # step 5: all-gather; vanishing test, DSS, rewrite the score tokens      (Alg. 1 l.9-16, Alg. 2 l.17-32)
    # step 6: A_base (Eq. 1), A_d / A_t (Eq. 5, Eq. 6 after DSS)              (Alg. 1 l.17, Alg. 2 l.33)
    # step 7: per-token advantage map, loss (Eq. 7-8), backward              (Alg. 1 l.18, Alg. 2 l.34)
    # step 8: optimizer step after the accumulation, log, checkpoint         (Alg. 1 l.19, Alg. 2 l.35)
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import zlib
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from prp.train import checkpoint as ckpt_io
from prp.train.advantages import advantage_vanishing, group_advantages, rating_advantages, substitute_scores
from prp.core.data import (
    ImageError,
    LoadResult,
    Record,
    drop_unparsable_gold,
    load_chartqa_train,
    load_jsonl,
    load_mmk12,
)
from prp.train.loss import Segment, prp_loss, token_advantage_map
from prp.core.parsing import parse_completion, span_token_indices
from prp.core.prompts import CN_TOKEN, UN_TOKEN, build_messages
from prp.train.rewards import accuracy_reward, overlong_reward, rating_reward
from prp.train.rollout import (
    PromptBatch,
    build_batch,
    build_prompts,
    completion_logprobs,
    format_score,
    generate_rollout,
    rewrite_score,
    step_seed,
)
from prp.train.config import TrainConfig, dump_config

log = logging.getLogger("prp.train")

RL_MODES = ("grpo", "drl", "jrl")
PROMPT_MODE = {"grpo": "grpo", "drl": "drl", "jrl": "jrl", "sft-cn": "target"}
SFT_FORMATS = ("none", "drl", "jrl")  # sft_rating=mixed picks one per record


# ============================================================================ distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    deepspeed: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # NCCL gathers CUDA tensors only

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's [G, ...] tensor along dim 0 (rank order) -> [G*world, ...]."""
        if self.world == 1:
            return t
        local = t.contiguous().to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(t.device)


def setup_dist(use_deepspeed: bool) -> Dist:
    if not use_deepspeed:
        return Dist()
    import deepspeed

    deepspeed.init_distributed()  # picks gloo on CPU, nccl on CUDA
    device = torch.device(deepspeed.get_accelerator().current_device_name())
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), deepspeed=True, device=device)


def ds_config_for(cfg: TrainConfig, world: int) -> dict:
    """The DeepSpeed JSON with the batch/accumulation/precision fields filled from the TrainConfig."""
    path = cfg.deepspeed_config or str(Path(__file__).resolve().parents[2] / "configs" / "ds_zero3.json")
    ds = json.loads(Path(path).read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds["bf16"] = {"enabled": bool(cfg.bf16)}
    ds.pop("optimizer", None)  # a torch optimizer is passed in (DeepSpeed's would JIT-build cpu_adam)
    ds.pop("scheduler", None)
    return ds


# ============================================================================ data


def resolve_data(cfg: TrainConfig, d: Dist) -> Path:
    """`synthetic:<n>` -> the generated benchmark's train.jsonl (rank 0 writes it once)."""
    if not cfg.train_data.startswith("synthetic:"):
        return Path(cfg.train_data)
    n = int(cfg.train_data.split(":", 1)[1])
    out = Path(cfg.output_dir) / "data"
    path = out / "train.jsonl"
    if d.main and not path.exists():
        from prp.toy.synthetic import build_benchmark

        build_benchmark(out, seed=cfg.seed, sizes={"train": n})
    d.barrier()
    return path


def load_records(cfg: TrainConfig, path: Path) -> LoadResult:
    """Load, then drop what training cannot use (each drop counted by reason)."""
    root = cfg.image_root or None
    if cfg.data_format == "mmk12":
        result = load_mmk12(path, image_root=root)
    elif cfg.data_format == "chartqa":
        result = load_chartqa_train(path, image_root=root)
    elif cfg.data_format == "jsonl":
        result = load_jsonl(path, image_root=root, require_answer=True)
    else:
        raise ValueError(f"unknown data_format {cfg.data_format!r}")
    result = drop_unparsable_gold(result)
    if cfg.mode == "sft":
        kept = []
        for r in result.records:
            if isinstance(r.meta.get("reasoning"), str) and r.meta["reasoning"].strip():
                kept.append(r)
            else:
                result.skipped["no_reasoning"] += 1
        result.records = kept
    if cfg.max_records:
        result.records = result.records[: cfg.max_records]
    return result


def epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    """The sampler: a permutation per epoch, a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(step_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


def safe_image(record: Record) -> tuple[Image.Image | None, bool]:
    """(image, ok): a file that broke after loading is replaced by a blank image and its group not trained."""
    try:
        return record.load_image(), True
    except ImageError as exc:
        log.warning("record %s: %s; not trained this step", record.id, exc)
        return Image.new("RGB", (56, 56)), False


# ============================================================================ models


def materialise_model(spec: str, out_dir: Path, *, seed: int, d: Dist) -> str:
    """`tiny:<size>` -> a saved tiny model dir (rank 0 builds it once); anything else is a path."""
    if not spec.startswith("tiny:"):
        return spec
    size = spec.split(":", 1)[1]
    path = out_dir / f"tiny-{size}-seed{seed}"
    if d.main and not (path / "config.json").exists():
        from prp.toy.tiny import save_tiny_model

        tmp = path.with_name(path.name + ".tmp")
        save_tiny_model(tmp, size=size, seed=seed)
        os.replace(tmp, path)
    d.barrier()
    return str(path)


def set_max_pixels(processor, cfg: TrainConfig) -> None:
    from prp.core.modeling import set_pixel_bounds

    set_pixel_bounds(processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 1.0 - progress) if cfg.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return fn


# ============================================================================ advantages (on gathered groups)


@dataclass
class GroupAdvantages:
    """Advantages of G groups of N completions (the rows of every rank, gathered)."""

    a_base: torch.Tensor  # [G, N] Eq. 1
    a_d: torch.Tensor | None  # [G, N] Eq. 5, or Eq. 6 where DSS fired; None in grpo
    a_t: torch.Tensor | None  # [G, N] likewise for t; None unless jrl
    acc_dft: torch.Tensor  # [G] Eq. 3
    r_dft: torch.Tensor  # [G, N] Eq. 4 of the ratings as generated (logged)
    r_tgt: torch.Tensor  # [G, N]
    new_d: torch.Tensor  # [G, N] substituted d' (NaN = keep the generated rating)
    new_t: torch.Tensor  # [G, N]
    dss_d: torch.Tensor  # [G] bool, DSS fired on d
    dss_t: torch.Tensor  # [G] bool


def _scores(row: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in row.tolist()]


def _rating_part(scores: torch.Tensor, acc: torch.Tensor, *, dss: bool, mu: float, sigma: float,
                 generator: torch.Generator):
    """R (Eq. 4), A (Eq. 5) and, where the advantage vanishes, DSS (Eq. 6) for one rating kind."""
    groups, n = scores.shape
    rewards = torch.tensor([[rating_reward(s, a) for s in _scores(scores[g])] for g, a in enumerate(acc.tolist())],
                           dtype=torch.float64).reshape(groups, n)
    adv = rating_advantages(rewards).float()
    new = torch.full_like(scores, float("nan"))
    fired = torch.zeros(groups, dtype=torch.bool)
    for g in range(groups):
        row, a = _scores(scores[g]), float(acc[g])
        if dss and advantage_vanishing(row, a, mu, sigma):
            sub = substitute_scores(row, a, generator=generator)  # d_N kept, d_1..d_{N-1} redrawn
            adv[g] = sub.advantages
            new[g, : n - 1] = torch.tensor(sub.scores[:-1], dtype=scores.dtype)
            fired[g] = True
    return rewards, adv, new, fired


def compute_advantages(
    *, mode: str, base_rewards: torch.Tensor, correct: torch.Tensor, d: torch.Tensor, t: torch.Tensor,
    acc_tgt: torch.Tensor, valid: torch.Tensor, cfg: TrainConfig, generator: torch.Generator,
) -> GroupAdvantages:
    """Steps 5-6 on gathered group tensors: base_rewards/correct/d/t [G, N] (NaN = no rating), acc_tgt/valid [G].

    >>> cfg = TrainConfig(mode="drl", model="m", train_data="x", mu=0.2, sigma=0.05)
    >>> out = compute_advantages(mode="drl", base_rewards=torch.tensor([[2., 1, 1, 1]]),
    ...     correct=torch.tensor([[1., 0, 0, 0]]), d=torch.tensor([[0.9, 0.9, 0.9, 0.9]], dtype=torch.float64),
    ...     t=torch.full((1, 4), float("nan"), dtype=torch.float64), acc_tgt=torch.zeros(1),
    ...     valid=torch.tensor([True]), cfg=cfg, generator=torch.Generator().manual_seed(0))
    >>> bool(out.dss_d[0]), out.new_d[0, 3].isnan().item(), round(out.a_d[0].sum().item(), 6)
    (True, True, 0.0)
    """
    acc_dft = correct.float().mean(-1)  # [G] Eq. 3 (Alg. 1 l.4)
    a_base = group_advantages(base_rewards.float())  # [G, N] Eq. 1
    kw = {"dss": cfg.dss, "mu": cfg.mu, "sigma": cfg.sigma, "generator": generator}
    r_dft, a_d, new_d, dss_d = _rating_part(d, acc_dft, **kw)  # Alg. 1 l.9-16
    r_tgt, a_t, new_t, dss_t = _rating_part(t, acc_tgt, **kw)  # Alg. 2 l.25-32
    zero = ~valid.bool()  # groups that must not train (runtime bad image, prompt too long)
    for a in (a_base, a_d, a_t):
        a[zero] = 0.0
    for new in (new_d, new_t):
        new[zero] = float("nan")
    return GroupAdvantages(
        a_base=a_base, a_d=a_d if mode in ("drl", "jrl") else None, a_t=a_t if mode == "jrl" else None,
        acc_dft=acc_dft, r_dft=r_dft, r_tgt=r_tgt, new_d=new_d, new_t=new_t,
        dss_d=dss_d & valid.bool(), dss_t=dss_t & valid.bool() & torch.tensor(mode == "jrl"),
    )


def apply_substitution(ids: list[int], tokenizer, *, mode: str, new_d: float, new_t: float) -> list[int]:
    """Alg. 1 l.13: write the substituted ratings into the completion's tokens (t first, then d)."""
    for tag, value in (("target", new_t), ("confidence", new_d)):
        if math.isnan(value):
            continue
        text = tokenizer.decode(ids, skip_special_tokens=True)
        parsed = parse_completion(text, mode)
        span = parsed.target_span if tag == "target" else parsed.confidence_span
        new_str = format_score(value)
        if span is None or text[span[0]:span[1]] == new_str:
            continue
        ids, _ = rewrite_score(ids, tokenizer, span, new_str)
    return ids


def completion_segments(ids: list[int], tokenizer, mode: str) -> list[int]:
    """Segment of each completion token: DRAFT for d's score tokens, TARGET for t's, REST otherwise
    (tags, reasoning, answer and the EOS)."""
    segs = [int(Segment.REST)] * len(ids)
    if mode in ("drl", "jrl"):
        parsed = parse_completion(tokenizer.decode(ids, skip_special_tokens=True), mode)
        for span, seg in ((parsed.confidence_span, Segment.DRAFT), (parsed.target_span, Segment.TARGET)):
            for i in span_token_indices(ids, tokenizer, span):
                segs[i] = int(seg)
    return segs


# ============================================================================ micro-steps


@dataclass
class MicroOut:
    batch: object  # rollout.TrainBatch
    weights: torch.Tensor  # [B, L] per-token weights of the completion positions
    kind: str  # "pg" (Eq. 2/7/8) or "ce" (supervised: -sum w logp / sum w)
    temperature: float
    metrics: dict  # name -> list of values (global where gathered)
    samples: list  # dicts for samples.jsonl


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False, use_deepspeed: bool = False):
        self.cfg, self.resume = cfg, resume
        self.d = setup_dist(use_deepspeed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        )
        logging.basicConfig(level=logging.INFO if self.d.main else logging.WARNING,
                            format=f"[rank{self.d.rank}] %(levelname)s %(name)s: %(message)s")

    # ------------------------------------------------------------------ set-up
    def setup_data(self) -> None:
        cfg = self.cfg
        path = resolve_data(cfg, self.d)
        result = load_records(cfg, path)
        self.records = result.records
        self.skipped: Counter = Counter(result.skipped)
        if self.d.main:
            log.info("data %s: %s", path, result.summary())
        self.acc_tgt: dict[str, float] = {}
        if cfg.mode in ("jrl", "presample"):
            self.acc_tgt = self.ensure_acc_tgt()  # step 1 (Alg. 2 l.1-7)
        if cfg.mode == "jrl":
            kept = [r for r in self.records if r.id in self.acc_tgt]
            self.skipped["no_acc_tgt"] += len(self.records) - len(kept)
            self.records = kept

    def ensure_acc_tgt(self) -> dict[str, float]:
        """Alg. 2 l.1-7: the given cache, else presample with `target_model` into output_dir (resumable)."""
        from prp.train.presample import make_sampler, presample, read_cache

        cfg = self.cfg
        if cfg.acc_tgt_cache and cfg.mode != "presample" and Path(cfg.acc_tgt_cache).exists():
            return read_cache(cfg.acc_tgt_cache)
        cache = Path(cfg.acc_tgt_cache or self.out / "acc_tgt.jsonl")
        if not cfg.target_model:
            raise ValueError("JRL needs acc_tgt_cache or a target_model to presample with")
        target = cfg.target_model
        if not target.startswith("openai:"):
            target = materialise_model(target, self.out, seed=cfg.seed + 1, d=self.d)
        if self.d.main:
            counts = presample(self.records, make_sampler(cfg, target), cache, m=cfg.presample_m,
                               batch_size=cfg.presample_batch_size, progress=True)
            log.info("presample %s: %s", cache, dict(counts))
        self.d.barrier()
        return read_cache(cache)

    def setup_model(self) -> None:
        cfg, d = self.cfg, self.d
        from prp.core.modeling import load_model
        from prp.toy.tiny import freeze_vision_biases

        self.resume_from = ckpt_io.latest_checkpoint(self.out) if self.resume else None
        if d.main:
            ckpt_io.remove_stale_tmp(self.out)
        path = str(self.resume_from) if self.resume_from else materialise_model(cfg.model, self.out, seed=cfg.seed, d=d)
        self.ds_config = ds_config_for(cfg, d.world) if d.deepspeed else None
        if d.deepspeed:
            from transformers.integrations import HfDeepSpeedConfig

            # Must be alive while from_pretrained runs: it makes it build the model partitioned (ZeRO-3).
            self._hf_ds = HfDeepSpeedConfig(self.ds_config)
        # fp32 weights: AdamW steps of ~1e-7 vanish in bf16 (most bf16 weights never change).
        # bf16 is the compute dtype (autocast, or DeepSpeed's bf16 with its fp32 master copy).
        model, processor = load_model(path, device=None if d.deepspeed else self.device, dtype=torch.float32,
                                      trust_remote_code=cfg.trust_remote_code)
        set_max_pixels(processor, cfg)
        tok = processor.tokenizer
        if cfg.mode == "sft-cn":
            tok.add_tokens([CN_TOKEN, UN_TOKEN], special_tokens=True)
            if len(tok) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
        if cfg.freeze_vision_biases:
            freeze_vision_biases(model)  # requires_grad is not saved: re-applied on every load
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.processor, self.tok = processor, tok
        self.eos_id = tok.convert_tokens_to_ids(tok.eos_token)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.weight_decay)
        self.ppd = cfg.per_device_batch_size // (1 if cfg.mode == "sft" else cfg.num_generations)  # prompts/rank
        self.micro_per_epoch = len(self.records) // (self.ppd * d.world)
        if self.micro_per_epoch == 0:
            raise ValueError(f"{len(self.records)} records < one global batch of {self.ppd * d.world} prompts")
        self.total_steps = cfg.max_steps or max(1, int(cfg.num_epochs * self.micro_per_epoch) // cfg.gradient_accumulation_steps)
        # Built on the torch optimizer: DeepSpeed's ZeRO wrapper keeps using its param_groups, and the
        # engine steps the scheduler at accumulation boundaries; plain torch steps it in optimizer_step.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, self.total_steps))
        self.engine = None
        if d.deepspeed:
            import deepspeed

            self.engine, optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=self.scheduler, config=self.ds_config)
            self.model = self.engine.module
        else:
            self.model = model
        self.optimizer = optimizer
        self.start_step = 0
        if self.resume_from:
            self.load_state(self.resume_from)

    def load_state(self, ckpt: Path) -> None:
        state, training, rng = ckpt_io.read_state(ckpt)
        if self.engine is not None:
            self.engine.load_checkpoint(str(ckpt / "ds"), tag="ds", load_optimizer_states=True,
                                        load_lr_scheduler_states=False)
        if training is not None:
            if self.engine is None:
                self.optimizer.load_state_dict(training["optimizer"])
            if training.get("scheduler") is not None:
                self.scheduler.load_state_dict(training["scheduler"])
        ckpt_io.set_rng_state(rng)
        self.start_step = state["step"]
        if self.d.main:
            log.info("resumed from %s at step %d", ckpt, self.start_step)

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> None:
        d = self.d
        tmp = self.out / f"ckpt-{step}.tmp"
        if d.main:
            tmp = ckpt_io.tmp_dir(self.out, step)
        d.barrier()
        state_dict = None
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp / "ds"), tag="ds")  # partitioned optimizer state, all ranks
            state_dict = self.engine._zero3_consolidated_16bit_state_dict()  # full weights on rank 0
        if d.main:
            self.model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            self.processor.save_pretrained(tmp)
            epoch = (step * self.cfg.gradient_accumulation_steps) // self.micro_per_epoch
            trainer_state = {
                "step": step, "micro_step": step * self.cfg.gradient_accumulation_steps, "epoch": epoch,
                "seed": self.cfg.seed, "world": d.world,
                "sampler_order": epoch_order(len(self.records), seed=self.cfg.seed, epoch=epoch),
            }
            ckpt_io.write_state(tmp, trainer_state=trainer_state,
                                optimizer=self.optimizer if self.engine is None else None, scheduler=self.scheduler)
        d.barrier()
        if d.main:
            final = ckpt_io.commit(tmp, keep_last=self.cfg.keep_last)
            log.info("saved %s", final)
            print(f"prp-checkpoint {step}", flush=True)
        d.barrier()

    # ------------------------------------------------------------------ micro-steps
    def records_for(self, micro: int) -> list[Record]:
        """Step 2: this rank's prompts for a global micro-step (distinct across ranks)."""
        epoch, pos = divmod(micro, self.micro_per_epoch)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order, self._order_epoch = epoch_order(len(self.records), seed=self.cfg.seed, epoch=epoch), epoch
        span = self.ppd * self.d.world
        chunk = self._order[pos * span:(pos + 1) * span]
        return [self.records[i] for i in chunk[self.d.rank * self.ppd:(self.d.rank + 1) * self.ppd]]

    def prompts_for(self, records: list[Record], mode: str | list[str], repeat: int) -> tuple[PromptBatch, torch.Tensor]:
        """Prompt each record in `mode` (one mode, or one per record), `repeat` times; and which are valid."""
        images, ok = zip(*(safe_image(r) for r in records))
        modes = [mode] * len(records) if isinstance(mode, str) else mode
        msgs = [build_messages(r.question, mode=m, with_image=True) for r, m in zip(records, modes)]
        prompts = build_prompts(self.processor, msgs, list(images), repeat=repeat, device=self.device)
        too_long = (prompts.attention_mask.sum(1) > self.cfg.max_prompt_length).view(len(records), repeat).any(1)
        valid = torch.tensor(ok) & ~too_long.cpu()
        self.skipped["runtime_bad_image"] += sum(1 for x in ok if not x)
        self.skipped["prompt_too_long"] += int(too_long.sum())
        return prompts, valid

    def rollout(self, prompts: PromptBatch, micro: int, suppress: tuple[int, ...] = ()):
        return generate_rollout(
            self.model, self.processor, prompts, max_new_tokens=self.cfg.max_completion_length,
            temperature=self.cfg.temperature, top_p=self.cfg.top_p,
            seed=step_seed(self.cfg.seed, "rollout", micro, self.d.rank), synced_gpus=self.d.deepspeed,
            suppress=suppress,
        )

    def rl_micro(self, micro: int, records: list[Record]) -> MicroOut:
        cfg, tok, n, mode = self.cfg, self.tok, self.cfg.num_generations, self.cfg.mode
        prompts, valid = self.prompts_for(records, PROMPT_MODE[mode], n)  # step 2
        ro = self.rollout(prompts, micro)  # step 3
        texts = tok.batch_decode(ro.completions, skip_special_tokens=True)
        # step 4: parse and reward every completion (Alg. 1 l.6-7)
        parsed = [parse_completion(t, mode) for t in texts]
        fmt = [1.0 if p.format_ok else 0.0 for p in parsed]  # R_fmt (prp.train.rewards.format_reward)
        acc = []
        for i, p in enumerate(parsed):
            a = accuracy_reward(p.answer, records[i // n].answer or "")
            if a is None:  # e.g. a math-verify timeout: Acc would be wrong, so the group is not trained
                self.skipped["runtime_unparsable_gold"] += 1
                valid[i // n] = False
            acc.append(a or 0.0)
        lengths = [len(c) for c in ro.completions]
        over = [overlong_reward(x, max_length=cfg.max_completion_length, cache_length=cfg.overlong_cache_length)
                if cfg.overlong_cache_length else 0.0 for x in lengths]
        g = len(records)
        shape = (g, n)
        nan = float("nan")
        local = {
            "base": torch.tensor([f + a + o for f, a, o in zip(fmt, acc, over)]).view(shape),
            "fmt": torch.tensor(fmt).view(shape), "acc": torch.tensor(acc).view(shape),
            "over": torch.tensor(over).view(shape),
            "d": torch.tensor([nan if p.confidence is None else p.confidence for p in parsed], dtype=torch.float64).view(shape),
            "t": torch.tensor([nan if p.target is None else p.target for p in parsed], dtype=torch.float64).view(shape),
            "acc_tgt": torch.tensor([self.acc_tgt.get(r.id, 0.0) for r in records], dtype=torch.float64),
            "valid": valid.to(torch.float32),
            "len": torch.tensor(lengths, dtype=torch.float32).view(shape),
            "trunc": torch.tensor(ro.truncated, dtype=torch.float32).view(shape),
        }
        # step 5-6: gather every rank's groups, then the same advantage computation on every rank
        glob = {k: self.d.gather(v) for k, v in local.items()}
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, "dss", micro))
        adv = compute_advantages(
            mode=mode, base_rewards=glob["base"], correct=glob["acc"] > 0.5, d=glob["d"], t=glob["t"],
            acc_tgt=glob["acc_tgt"], valid=glob["valid"] > 0.5, cfg=cfg, generator=gen,
        )
        rows = slice(self.d.rank * g, (self.d.rank + 1) * g)  # this rank's groups
        new_d, new_t = adv.new_d[rows].reshape(-1).tolist(), adv.new_t[rows].reshape(-1).tolist()
        completions = [
            apply_substitution(ids, tok, mode=mode, new_d=new_d[i], new_t=new_t[i])
            if not (math.isnan(new_d[i]) and math.isnan(new_t[i])) else ids
            for i, ids in enumerate(ro.completions)
        ]  # Alg. 1 l.13
        # step 7: one per-token advantage map over prompt + completion
        batch = build_batch(prompts, completions, pad_id=tok.pad_token_id)
        segments = torch.full(batch.input_ids.shape, int(Segment.PROMPT), dtype=torch.long)  # [B*N, P+L]
        for i, ids in enumerate(completions):
            segments[i, batch.prompt_len:batch.prompt_len + len(ids)] = torch.tensor(completion_segments(ids, tok, mode))
        weights = token_advantage_map(
            segments=segments, a_base=adv.a_base[rows].reshape(-1),
            a_d=None if adv.a_d is None else adv.a_d[rows].reshape(-1),
            a_t=None if adv.a_t is None else adv.a_t[rows].reshape(-1), alpha=cfg.alpha, beta=cfg.beta,
        )[:, batch.prompt_len:].to(self.device)  # [B*N, L]
        metrics = self.rl_metrics(glob, adv, mode)
        samples = [
            {"id": records[i // n].id, "gold": records[i // n].answer, "completion": texts[i],
             "format": fmt[i], "accuracy": acc[i], "d": parsed[i].confidence, "t": parsed[i].target,
             "acc_dft": float(adv.acc_dft[rows][i // n]), "a_base": float(adv.a_base[rows].reshape(-1)[i]),
             "substituted_d": None if math.isnan(new_d[i]) else new_d[i]}
            for i in range(min(len(texts), cfg.num_samples_logged))
        ]
        return MicroOut(batch, weights, "pg", cfg.temperature, metrics, samples)

    @staticmethod
    def rl_metrics(glob: dict, adv: GroupAdvantages, mode: str) -> dict:
        m: dict = {
            "reward/format": [glob["fmt"].mean().item()], "reward/accuracy": [glob["acc"].mean().item()],
            "reward/overlong": [glob["over"].mean().item()], "reward/base": [glob["base"].mean().item()],
            "zero_std_frac": [(glob["base"].std(-1, unbiased=False) < 1e-8).float().mean().item()],
            "completion_len_mean": [glob["len"].mean().item()], "completion_len_max": [glob["len"].max().item()],
            "truncated_frac": [glob["trunc"].mean().item()], "tokens": [glob["len"].sum().item()],
        }
        for key, scores, rewards, acc, fired, kinds in (
            ("d", glob["d"], adv.r_dft, adv.acc_dft, adv.dss_d, ("drl", "jrl")),
            ("t", glob["t"], adv.r_tgt, glob["acc_tgt"], adv.dss_t, ("jrl",)),
        ):
            if mode not in kinds:
                continue
            ok = ~scores.isnan()
            gap = (scores - acc.unsqueeze(-1).to(scores.dtype)).abs()
            m[f"reward/rating_{key}"] = [rewards.mean().item()]
            m[f"rating_{key}_mae"] = [gap[ok].mean().item() if ok.any() else float("nan")]
            m[f"rating_{key}_std"] = [torch.nan_to_num(scores, nan=0.0).std(-1, unbiased=False).mean().item()]
            m[f"rating_{key}_valid_frac"] = [ok.float().mean().item()]
            m[f"dss_{key}_rate"] = [fired.float().mean().item()]
        return m

    def sft_micro(self, micro: int, records: list[Record]) -> MicroOut:
        """Supervised warm start: `[rating]<think>{reasoning}</think><answer>{answer}</answer>` + EOS."""
        cfg, tok = self.cfg, self.tok
        # "mixed": each record in one of the three formats (fixed per record id), so one warm start
        # follows whichever prompt it is given (P, P_draft or P_joint), as the paper's base draft does.
        formats = [SFT_FORMATS[zlib.crc32(r.id.encode()) % 3] if cfg.sft_rating == "mixed" else cfg.sft_rating
                   for r in records]
        prompts, valid = self.prompts_for(records, [f if f != "none" else "target" for f in formats], 1)
        # sft_rating_value < 0: a fresh uniform 0.00-0.99 rating per record and step, like the base
        # model's "randomly evaluate" ratings (P_draft); a constant teaches the model one rating only.
        rng = random.Random(step_seed(cfg.seed, "sft_rating", micro, self.d.rank))
        completions = []
        for r, fmt in zip(records, formats):
            default = [rng.randrange(100) / 100 if cfg.sft_rating_value < 0 else cfg.sft_rating_value for _ in "dt"]
            d = format_score(float(r.meta.get("confidence", default[0])))
            t = format_score(float(r.meta.get("target_rating", default[1])))
            prefix = {"none": "", "drl": f"<confidence>{d}</confidence>",
                      "jrl": f"<target>{t}</target><confidence>{d}</confidence>"}[fmt]
            text = f"{prefix}<think>{r.meta['reasoning']}</think><answer>{r.answer}</answer>"
            completions.append(tok.encode(text, add_special_tokens=False)[: cfg.max_completion_length - 1] + [self.eos_id])
        batch = build_batch(prompts, completions, pad_id=tok.pad_token_id)
        weights = batch.completion_mask.float() * valid.float().unsqueeze(-1).to(self.device)
        lengths = [len(c) for c in completions]
        metrics = {"completion_len_mean": [sum(lengths) / len(lengths)], "completion_len_max": [max(lengths)],
                   "tokens": [sum(lengths) * self.d.world]}
        return MicroOut(batch, weights, "ce", 1.0, metrics, [])

    def sft_cn_micro(self, micro: int, records: list[Record]) -> MicroOut:
        """Paradigm 2 baseline (Sec. 2.1): N samples, + [CN] if correct / [UN] if not; train the whole
        correct sequence, and only the [UN] token of an incorrect one.  Sampling is online (the current
        policy each step) rather than one offline pass: same data shape, no second stage."""
        cfg, tok, n = self.cfg, self.tok, self.cfg.num_generations
        prompts, valid = self.prompts_for(records, "target", n)
        cn, un = tok.convert_tokens_to_ids(CN_TOKEN), tok.convert_tokens_to_ids(UN_TOKEN)
        # The body is the policy's own answer; only the trainer appends [CN] / [UN], so they are never
        # sampled (a sampled [UN] would end the answer early, and the scorer reads P[CN] after it).
        ro = self.rollout(prompts, micro, suppress=(cn, un))
        completions, rows_w, correct = [], [], []
        for i, ids in enumerate(ro.completions):
            text = tok.decode(ids, skip_special_tokens=True)
            ok = accuracy_reward(parse_completion(text, "grpo").answer, records[i // n].answer or "") == 1.0
            body = ids[:-1] if ids and ids[-1] == self.eos_id else ids
            seq = body + [cn if ok else un, self.eos_id]
            w = [1.0] * len(seq) if ok else [0.0] * len(body) + [1.0, 0.0]
            if not bool(valid[i // n]):
                w = [0.0] * len(seq)
            completions.append(seq)
            rows_w.append(w)
            correct.append(float(ok))
        batch = build_batch(prompts, completions, pad_id=tok.pad_token_id)
        weights = torch.zeros(batch.completion_mask.shape)
        for i, w in enumerate(rows_w):
            weights[i, : len(w)] = torch.tensor(w)
        lengths = torch.tensor([len(c) for c in ro.completions], dtype=torch.float32)
        glob_acc, glob_len = self.d.gather(torch.tensor(correct)), self.d.gather(lengths)
        metrics = {"reward/accuracy": [glob_acc.mean().item()], "completion_len_mean": [glob_len.mean().item()],
                   "completion_len_max": [glob_len.max().item()], "tokens": [glob_len.sum().item()],
                   "truncated_frac": [sum(ro.truncated) / len(ro.truncated)]}
        return MicroOut(batch, weights.to(self.device), "ce", cfg.temperature, metrics, [])

    # ------------------------------------------------------------------ the loop
    def forward_backward(self, out: MicroOut) -> float:
        """step 7: log-probs of the completion tokens, the loss, backward (scaled for accumulation)."""
        cfg = self.cfg
        net = self.engine if self.engine is not None else self.model
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if cfg.bf16 and self.engine is None else nullcontext())
        with autocast:
            logp = completion_logprobs(net, out.batch, temperature=out.temperature)  # [B, L]
        if out.kind == "pg":
            # Eq. 2/7/8 with ratio = pi/pi_old = 1 numerically (pi_old = detached pi): single update.
            loss = prp_loss(logprobs=logp, token_weights=out.weights).loss
        else:
            loss = -(logp * out.weights).sum() / out.weights.sum().clamp(min=1.0)
        if self.engine is not None:
            # DeepSpeed divides by the accumulation steps itself and counts micro-steps in step():
            # it must be called after every backward, and only updates at the boundary.
            self.engine.backward(loss)
            self.engine.step()
        else:
            (loss / cfg.gradient_accumulation_steps).backward()
        return loss.item()

    def optimizer_step(self) -> float:
        """step 8: one update per `gradient_accumulation_steps` rollouts."""
        if self.engine is not None:  # the engine already stepped at the boundary (forward_backward)
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def run(self) -> Path | None:
        cfg, d = self.cfg, self.d
        self.setup_data()
        if cfg.mode == "presample":
            return Path(cfg.acc_tgt_cache or self.out / "acc_tgt.jsonl")
        self.setup_model()
        if d.main:
            dump_config(cfg, self.out / "config.json")
            self._trim_log(self.out / "metrics.jsonl", self.start_step)
        micro_fn = {"sft": self.sft_micro, "sft-cn": self.sft_cn_micro}.get(cfg.mode, self.rl_micro)
        bar = None
        if d.main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.start_step, desc=cfg.mode, dynamic_ncols=True, file=sys.stderr)
        last_saved = self.start_step if self.resume_from else -1
        for step in range(self.start_step, self.total_steps):
            if d.main:
                print(f"prp-step-start {step + 1}", flush=True)
            if cfg.step_delay_s:
                time.sleep(cfg.step_delay_s)
            t0 = time.perf_counter()
            metrics: dict = defaultdict(list)
            samples: list = []
            for k in range(cfg.gradient_accumulation_steps):
                micro = step * cfg.gradient_accumulation_steps + k
                out = micro_fn(micro, self.records_for(micro))  # steps 2-6
                metrics["loss"].append(self.forward_backward(out))  # step 7
                for key, values in out.metrics.items():
                    metrics[key].extend(values)
                samples.extend(out.samples)
            lr = self.scheduler.get_last_lr()[0]
            grad_norm = self.optimizer_step()  # step 8
            dt = time.perf_counter() - t0
            if d.main:
                self.log_step(step + 1, metrics, samples, dt=dt, lr=lr, grad_norm=grad_norm)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(metrics['loss']):.4f}", s=f"{dt:.2f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == self.total_steps:
                self.save(step + 1)
                last_saved = step + 1
        if bar is not None:
            bar.close()
        if last_saved != self.total_steps and self.total_steps > self.start_step:
            self.save(self.total_steps)
        final = ckpt_io.latest_checkpoint(self.out)
        if d.main:
            log.info("done: %s; skipped %s", final, dict(self.skipped))
        return final

    def log_step(self, step: int, metrics: dict, samples: list, *, dt: float, lr: float, grad_norm: float) -> None:
        row = {"step": step, "epoch": (step * self.cfg.gradient_accumulation_steps) / self.micro_per_epoch,
               "lr": lr, "step_time_s": dt, "grad_norm": grad_norm,
               "tokens_per_s": float(np.sum(metrics.pop("tokens", [0]))) / dt,
               "skipped": dict(self.skipped)}
        for key, values in metrics.items():
            vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
            if key == "completion_len_max":
                row[key] = max(vals) if vals else None
            else:
                row[key] = float(np.mean(vals)) if vals else None
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if samples and self.cfg.sample_every and step % self.cfg.sample_every == 0:
            with (self.out / "samples.jsonl").open("a") as f:
                for s in samples:
                    f.write(json.dumps({"step": step, **s}) + "\n")

    @staticmethod
    def _trim_log(path: Path, keep_upto: int) -> None:
        """On resume, drop log lines of steps the killed run did past its last checkpoint (they rerun)."""
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= keep_upto:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                continue
        path.write_text("".join(x + "\n" for x in keep))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, *, resume: bool = False, use_deepspeed: bool = False) -> Path | None:
    seed_everything(cfg.seed)
    return Trainer(cfg, resume=resume, use_deepspeed=use_deepspeed).run()
