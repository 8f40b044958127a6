"""The PRP training loop: GRPO, DRL (Alg. 1), JRL (Alg. 2), SFT warm start, the [CN]/[UN] baseline, presampling.

One loop for CPU and GPU, one process or many (launched with `deepspeed`: ZeRO-3, see prp.train.dist).
Every optimizer step runs `gradient_accumulation_steps` micro-steps; a micro-step is one rollout
used for exactly one update (the paper's single-update loss: ratio 1, old log-probs = detached
current ones).  Read `Trainer.run` top to bottom; the step numbers match prp.train.step's and the
Alg. 1 / Alg. 2 lines they implement:

    step 1  Acc_tgt dictionary, loaded or presampled before training     (Alg. 2 l.1-7)      Trainer.__init__
    step 2-6  prompts, rollout, rewards, gathered advantages + DSS       (Alg. 1 l.2-17)     prp.train.step
    step 7  loss (Eq. 2/7/8) and backward                                (Alg. 1 l.18)       policy.forward_backward
    step 8  optimizer step after the accumulation, log, checkpoint       (Alg. 1 l.19)       policy.optimizer_step
"""
from __future__ import annotations

import logging
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from prp.core.adapters import adapter_base, is_adapter_dir
from prp.train import checkpoint as ckpt_io
from prp.train import lora
from prp.train.config import ConfigError, TrainConfig, dump_config
from prp.train.dist import local_device, setup_dist
from prp.train.logs import RunLog, progress_postfix, step_row, test_marker
from prp.train.modes import StepKind, get_mode
from prp.train.policy import (
    NonFiniteError,
    build_policy,
    forward_backward,
    load_training_state,
    optimizer_step,
    resolve_model,
    save_checkpoint,
)
from prp.train.sampler import Sampler, epoch_order, load_records, resolve_data
from prp.train.step import MICRO_STEPS, MicroStepResult, StepContext

log = logging.getLogger("prp.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Data, Acc_tgt and (unless presampling) the policy, built in __init__; `run` trains."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, use_deepspeed: bool = False, recipe: str = ""):
        self.cfg, self.mode = cfg, get_mode(cfg.mode)
        self.recipe = recipe  # the config this run's values came from, recorded in each checkpoint's prp.json
        self.d = setup_dist(use_deepspeed)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO if self.d.main else logging.WARNING,
                            format=f"[rank{self.d.rank}] %(levelname)s %(name)s: %(message)s")
        # data: bad rows / images / gold answers are dropped and counted, never a crash
        path = resolve_data(cfg)
        loaded = load_records(cfg, path)
        self.records = loaded.records
        self.skipped: Counter = Counter(loaded.skipped)
        if self.d.main:
            log.info("data %s: %s", path, loaded.summary())
        # step 1: Acc_tgt (Alg. 2 l.1-7)
        self.acc_tgt: dict[str, float] = self.ensure_acc_tgt() if self.mode.needs_acc_tgt else {}
        if self.mode.name == "jrl":
            kept = [r for r in self.records if r.id in self.acc_tgt]
            self.skipped["no_acc_tgt"] += len(self.records) - len(kept)
            self.records = kept
        # Paradigm 2's pre-sampling stage (Sec. 2.1): train on a fixed [CN]/[UN]-labelled set
        self.presampled_cn = self.mode.step is StepKind.SFT_CN and cfg.sft_cn_sampling == "presampled"
        if self.presampled_cn:
            self.records = self.ensure_cn_set()
        self.ctx: StepContext | None = None
        self.resume_from: Path | None = None
        self.start_step = 0
        if not self.mode.trains:
            return
        sampled = self.mode.sampled and not self.presampled_cn  # a presampled example is one completion
        prompts_per_rank = cfg.per_device_batch_size // (cfg.num_generations if sampled else 1)
        self.sampler = Sampler(self.records, prompts_per_rank=prompts_per_rank, d=self.d, seed=cfg.seed)
        per_epoch = self.sampler.micro_per_epoch
        self.total_steps = cfg.max_steps or max(1, int(cfg.num_epochs * per_epoch) // cfg.gradient_accumulation_steps)
        resume_point = ckpt_io.find_resume_point(self.out, deepspeed=self.d.deepspeed,
                                                 weights_only=cfg.resume_weights_only) if resume else None
        self.resume_from = resume_point.path if resume_point else None
        saved_world = resume_point.trainer_state.get("world") if resume_point else None
        if saved_world not in (None, self.d.world) and not cfg.resume_weights_only:
            # each rank's data order and (under ZeRO-3) its optimizer shard depend on the process count
            raise ConfigError(f"{self.resume_from} was written by {saved_world} processes, this run has "
                              f"{self.d.world}: resume with {saved_world}, or keep only the weights with "
                              "--resume-weights-only")
        if self.d.main:
            ckpt_io.remove_stale_tmp(self.out)
        if resume_point is not None:
            check_resume_kind(cfg, resume_point)
        model_path = str(self.resume_from) if self.resume_from else resolve_model(cfg.model)
        policy = build_policy(cfg, model_path, d=self.d, device=local_device(), total_steps=self.total_steps)
        self.ctx = StepContext(cfg=cfg, mode=self.mode, d=self.d, policy=policy, acc_tgt=self.acc_tgt,
                               skipped=self.skipped)
        if self.resume_from:
            self.start_step = load_training_state(policy, resume_point)
            if self.d.main:
                log.info("resumed from %s at step %d", self.resume_from, self.start_step)

    def ensure_acc_tgt(self) -> dict[str, float]:
        """Alg. 2 l.1-7: the given cache, else presample with `target_model` into output_dir (resumable)."""
        from prp.train.presample import make_sampler, presample, read_cache

        cfg = self.cfg
        if cfg.acc_tgt_cache and self.mode.trains and Path(cfg.acc_tgt_cache).exists():
            return read_cache(cfg.acc_tgt_cache)
        cache = Path(cfg.acc_tgt_cache or self.out / "acc_tgt.jsonl")
        if not cfg.target_model:
            raise ConfigError(f"{cfg.mode} needs Acc_tgt: pass --acc-tgt-cache FILE (from --mode presample) "
                             "or --target-model DIR to presample with")
        target = cfg.target_model
        if not target.startswith("openai:"):
            target = resolve_model(target, what="target_model")
        if self.d.main:
            counts = presample(self.records, make_sampler(cfg, target), cache, m=cfg.presample_m,
                               batch_size=cfg.presample_batch_size, progress=True)
            log.info("presample %s: %s", cache, dict(counts))
        self.d.barrier()
        return read_cache(cache)

    def ensure_cn_set(self) -> list:
        """Paradigm 2's pre-sampling stage (Sec. 2.1, Sec. 5): N answers per question from the model sft-cn
        starts from (`model`: the GRPO-trained one), judged with evaluation's rule and labelled [CN]/[UN] into
        `cn_cache` (default output_dir/cn_presample.jsonl; resumable: only unlabelled questions are sampled);
        returns the training examples, one per labelled answer."""
        from prp.train.presample import cn_examples, local_sampler, presample_cn, read_cn_set

        cfg = self.cfg
        path = Path(cfg.cn_cache or self.out / "cn_presample.jsonl")
        labelled = read_cn_set(path)  # read once: the file can hold every question's N answers
        missing = [r for r in self.records if r.id not in labelled]
        if self.d.main and missing:
            device = "cuda" if torch.cuda.is_available() else None
            sampler = local_sampler(resolve_model(cfg.model), m=cfg.num_generations,
                                    max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                    top_p=cfg.top_p, seed=cfg.seed, device=device, max_pixels=cfg.max_pixels)
            counts = presample_cn(missing, sampler, path, batch_size=cfg.presample_batch_size, progress=True)
            log.info("presample [CN]/[UN] %s: %s", path, dict(counts))
        self.d.barrier()
        labelled = read_cn_set(path)
        self.skipped["no_cn_label"] += sum(1 for r in self.records if r.id not in labelled)
        return cn_examples(self.records, labelled)

    # ------------------------------------------------------------------ the loop
    def micro_step(self, micro: int) -> MicroStepResult:
        """Steps 2-6 for global micro-step `micro` on this rank's records."""
        return MICRO_STEPS[self.mode.step](self.ctx, micro, self.sampler.records_for(micro))

    def run(self) -> Path | None:
        cfg, d = self.cfg, self.d
        if not self.mode.trains:
            return Path(cfg.acc_tgt_cache or self.out / "acc_tgt.jsonl")
        policy = self.ctx.policy
        runlog = None
        if d.main:
            dump_config(cfg, self.out / "config.json")
            runlog = RunLog(self.out, report_to=cfg.reporters, sample_every=cfg.sample_every,
                            config=cfg.to_dict(), resume_step=self.start_step)
        bar = None
        if d.main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.start_step, desc=cfg.mode, dynamic_ncols=True,
                       file=sys.stderr)
        last_saved = self.start_step if self.resume_from else -1
        try:
            for step in range(self.start_step, self.total_steps):
                if d.main:
                    test_marker(f"prp-step-start {step + 1}")
                if cfg.step_delay_s:
                    time.sleep(cfg.step_delay_s)
                t0 = time.perf_counter()
                metrics: dict = defaultdict(list)
                samples: list = []
                try:
                    for k in range(cfg.gradient_accumulation_steps):
                        micro = step * cfg.gradient_accumulation_steps + k
                        out = self.micro_step(micro)  # steps 2-6
                        metrics["loss"].append(forward_backward(  # step 7
                            policy, out.batch, out.weights, out.objective, temperature=out.temperature, d=d,
                            bf16=cfg.bf16, accumulation=cfg.gradient_accumulation_steps))
                        for key, values in out.metrics.items():
                            metrics[key].extend(values)
                        samples.extend(out.samples)
                    lr = policy.scheduler.get_last_lr()[0]
                    grad_norm = optimizer_step(policy, cfg.max_grad_norm)  # step 8
                except NonFiniteError as exc:
                    raise NonFiniteError(self._diverged(f"{exc} at step {step + 1}")) from None
                dt = time.perf_counter() - t0
                if d.main:
                    epoch = (step + 1) * cfg.gradient_accumulation_steps / self.sampler.micro_per_epoch
                    row = step_row(step + 1, metrics, epoch=epoch, lr=lr, dt=dt, grad_norm=grad_norm,
                                   skipped=self.skipped)
                    try:
                        runlog.write(row, samples)
                    except OSError as exc:
                        if ckpt_io.is_disk_full(exc, self.out):
                            raise ckpt_io.disk_full_error(exc, self.out, f"logging step {step + 1}",
                                                          ckpt_io.latest_checkpoint(self.out)) from exc
                        raise
                    bar.update(1)
                    bar.set_postfix(progress_postfix(row, policy_gradient=self.mode.step == StepKind.RL))
                if (step + 1) % cfg.save_every == 0 or step + 1 == self.total_steps:
                    self.save(step + 1)
                    last_saved = step + 1
        finally:
            if bar is not None:
                bar.close()
            if runlog is not None:
                runlog.close()
        if last_saved != self.total_steps and self.total_steps > self.start_step:
            self.save(self.total_steps)
        final = ckpt_io.latest_checkpoint(self.out)
        if d.main:
            log.info("done: %s; skipped %s", final, dict(self.skipped))
        return final

    def save(self, step: int) -> None:
        cfg = self.cfg
        epoch = (step * cfg.gradient_accumulation_steps) // self.sampler.micro_per_epoch
        trainer_state = {
            "step": step, "micro_step": step * cfg.gradient_accumulation_steps, "epoch": epoch,
            "seed": cfg.seed, "world": self.d.world,
            "sampler_order": epoch_order(len(self.records), seed=cfg.seed, epoch=epoch),
        }
        if self.ctx.policy.peft is not None:  # the base under the adapter, checked on resume (check_resume_kind)
            trainer_state["lora_base"] = lora.base_identity(self.ctx.policy.lora_base)
        try:
            save_checkpoint(self.ctx.policy, self.out, step, d=self.d, trainer_state=trainer_state,
                            keep_last=cfg.keep_last, settings=self.model_settings())
        except NonFiniteError as exc:
            raise NonFiniteError(self._diverged(str(exc))) from None
        except (OSError, RuntimeError) as exc:  # torch's writer reports ENOSPC as a RuntimeError
            if not ckpt_io.is_disk_full(exc, self.out):
                raise
            if self.d.main:
                ckpt_io.remove_stale_tmp(self.out)  # the partial ckpt-N.tmp: give its space back
            raise ckpt_io.disk_full_error(exc, self.out, f"saving ckpt-{step}",
                                          ckpt_io.latest_checkpoint(self.out)) from exc

    def model_settings(self) -> dict:
        """The checkpoint's prp.json (prp.core.recipe): how to route it and what a run from it starts with.

        `rating: forced`: the draft was trained (format reward) to write exactly the grammar forcing
        imposes, so forcing it keeps its own digits (the demo: the same d and t on 100 of 100 test queries,
        README "Measured") at about 1.5x less prefix time, and a draft that slips out of the format mid-
        training still gets a rating instead of a missing one.  `max_new_tokens`: the completion budget
        it was trained to finish in."""
        from prp.core.recipe import recipe_values

        cfg = self.cfg
        return {"mode": cfg.mode, "rating": "forced", "max_new_tokens": cfg.max_completion_length,
                "recipe": self.recipe, "train": recipe_values(cfg.to_dict(), TrainConfig().to_dict())}

    def _diverged(self, what: str) -> str:
        return (f"training diverged: {what} (learning_rate {self.cfg.learning_rate:g}); nothing was saved for "
                f"this step, the last good checkpoint is {ckpt_io.latest_checkpoint(self.out) or 'none'}; "
                "lower learning_rate (or max_grad_norm) and rerun")


def check_resume_kind(cfg: TrainConfig, point: ckpt_io.ResumePoint) -> None:
    """A LoRA run resumes from its adapter checkpoints over the same base model, a full run from full ones."""
    adapter = is_adapter_dir(point.path)
    if adapter and not cfg.lora_rank:
        raise ConfigError(f"{point.path} is a LoRA adapter checkpoint: resume it with the lora: block it was trained "
                          "with (its adapter_config.json), or start a full run from it with --model")
    if not adapter and cfg.lora_rank:
        raise ConfigError(f"{point.path} is a full-model checkpoint: resume it without the lora: block "
                          f"(lora_rank {cfg.lora_rank}), or start a LoRA run from it with --model and a new "
                          "--output-dir")
    if adapter:
        saved = point.trainer_state.get("lora_base")
        now = lora.base_identity(adapter_base(point.path))
        if saved is not None and saved != now:
            raise ConfigError(
                f"{point.path}: its base model changed since it was written ({saved['path']}, files "
                f"{saved['files']}; now {now['path']}, {now['files']}): resuming would train another model; "
                "restore that base model folder")


def train(cfg: TrainConfig, *, resume: bool = False, use_deepspeed: bool = False, recipe: str = "") -> Path | None:
    seed_everything(cfg.seed)
    return Trainer(cfg, resume=resume, use_deepspeed=use_deepspeed, recipe=recipe).run()


__all__ = ["Trainer", "seed_everything", "train"]
