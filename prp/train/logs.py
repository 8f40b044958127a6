"""The run's log: one metrics.jsonl row per optimizer step, sampled completions in samples.jsonl, and
the same scalars (+ the samples as text) to TensorBoard / Weights & Biases when `report_to` asks.

Rank 0 only.  On resume both JSONL files are trimmed to the resumed checkpoint's step (the killed
run's later lines are rerun), so each step appears once.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from prp.core.jsonl import JsonError, loads, open_regular
from prp.train.config import ConfigError

log = logging.getLogger("prp.train")

REPORTERS = ("tensorboard", "wandb")


def trim_jsonl(path: Path, keep_upto: int) -> int:
    """Keep the lines whose integer "step" <= keep_upto and drop every other line (torn, step-less,
    or unreadable: not UTF-8, too deep, an overlong number; prp.core.jsonl), logging how many;
    the kept lines are rewritten byte for byte, atomically.  Returns how many were dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    with open_regular(path) as f:  # a FIFO here would block the resume: refused
        lines = f.read().split(b"\n")
    for line in lines:
        if not line.strip():
            continue
        try:
            step = loads(line).get("step")
        except (JsonError, AttributeError):  # AttributeError: a line that is not an object
            step = None
        if isinstance(step, int) and not isinstance(step, bool) and step <= keep_upto:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        log.warning("%s: dropped %d lines past step %d or unreadable (the resumed run writes them again)",
                    path, dropped, keep_upto)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(x + b"\n" for x in keep))
    os.replace(tmp, path)
    return dropped


def step_row(step: int, metrics: dict[str, list], *, epoch: float, lr: float, dt: float, grad_norm: float,
             skipped: dict) -> dict:
    """One metrics.jsonl row: the micro-steps' values averaged (max for completion_len_max); NaN -> null.

    >>> row = step_row(3, {"loss": [1.0, 3.0], "tokens": [10, 30], "completion_len_max": [4, 9],
    ...                    "rating_d_mae": [float("nan"), 0.5]}, epoch=0.5, lr=1e-3, dt=2.0, grad_norm=1.0, skipped={})
    >>> row["loss"], row["tokens_per_s"], row["completion_len_max"], row["rating_d_mae"]
    (2.0, 20.0, 9, 0.5)
    """
    metrics = dict(metrics)
    row = {"step": step, "epoch": epoch, "lr": lr, "step_time_s": dt, "grad_norm": grad_norm,
           "tokens_per_s": float(np.sum(metrics.pop("tokens", [0]))) / dt, "skipped": dict(skipped)}
    for key, values in metrics.items():
        vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        if key == "completion_len_max":
            row[key] = max(vals) if vals else None
        else:
            row[key] = float(np.mean(vals)) if vals else None
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


MARKERS_ENV = "PRP_TEST_MARKERS"


def test_marker(text: str) -> None:
    """A line a test waits for (`prp-step-start N`, `prp-checkpoint N`): on stdout only when the env var
    PRP_TEST_MARKERS is set (tests/test_train_e2e.py's kill-and-resume test), never in a user's log."""
    if os.environ.get(MARKERS_ENV):
        print(text, flush=True)


def progress_postfix(row: dict, *, policy_gradient: bool) -> dict[str, str]:
    """What the progress bar shows after a step: the numbers that tell a user training works.

    RL modes (GRPO, DRL, JRL): the accuracy reward, the rating error |d - Acc| (and |t - Acc_tgt|) and
    the share of groups DSS rewrote, not the loss: with one update per rollout the importance ratio is 1
    and the group advantages sum to zero, so the GRPO loss is about 0 in value on every step while its
    gradient is not (docs/training.md).  SFT modes: the loss (the mean token negative log-likelihood).

    >>> progress_postfix({"loss": -0.0, "reward/accuracy": 0.5, "rating_d_mae": 0.21, "dss_d_rate": 0.25,
    ...                   "step_time_s": 1.5}, policy_gradient=True)
    {'acc': '0.50', 'd_err': '0.210', 'dss': '25%', 's': '1.50'}
    >>> progress_postfix({"loss": 1.2345, "step_time_s": 0.5}, policy_gradient=False)
    {'loss': '1.2345', 's': '0.50'}
    """
    shown = {}
    if policy_gradient:
        for key, label, fmt in (("reward/accuracy", "acc", "{:.2f}"), ("rating_d_mae", "d_err", "{:.3f}"),
                                ("rating_t_mae", "t_err", "{:.3f}"), ("dss_d_rate", "dss", "{:.0%}"),
                                ("dss_t_rate", "dss_t", "{:.0%}")):
            if row.get(key) is not None:
                shown[label] = fmt.format(row[key])
    elif row.get("loss") is not None:
        shown["loss"] = f"{row['loss']:.4f}"
    shown["s"] = f"{row['step_time_s']:.2f}"
    return shown


def check_reporters(names: list[str]) -> None:
    """Fail up front (before any model is loaded) when a reporter's package is missing."""
    for name in names:
        module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
        try:
            __import__(module)
        except ImportError:
            extra = "tensorboard" if name == "tensorboard" else "wandb"
            raise ConfigError(f"report_to {name}: the `{module}` package is not installed; "
                             f"pip install -e .[{extra}] (or drop it from report_to)") from None


class RunLog:
    def __init__(self, out: Path, *, report_to: list[str], sample_every: int, config: dict, resume_step: int = 0):
        self.out, self.sample_every = out, sample_every
        self.metrics_path, self.samples_path = out / "metrics.jsonl", out / "samples.jsonl"
        for path in (self.metrics_path, self.samples_path):  # a fresh run (step 0) in a used folder starts over
            trim_jsonl(path, resume_step)
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run hides the killed run's events past the checkpoint
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            self.tb.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        if "wandb" in report_to:
            import wandb

            self.wandb = wandb.init(project="prp", dir=str(out), config=config, resume="allow",
                                    name=out.name)

    def write(self, row: dict, samples: list[dict]) -> None:
        step = row["step"]
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k != "step"}
        scalars.update({f"skipped/{k}": v for k, v in row.get("skipped", {}).items()})
        logged = samples if samples and self.sample_every and step % self.sample_every == 0 else []
        if logged:
            with self.samples_path.open("a") as f:
                for s in logged:
                    f.write(json.dumps({"step": step, **s}) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            if logged:
                self.tb.add_text("samples", "\n\n".join(_sample_md(s) for s in logged), step)
            self.tb.flush()
        if self.wandb is not None:
            payload = dict(scalars)
            if logged:
                import wandb

                cols = sorted({k for s in logged for k in s})
                payload["samples"] = wandb.Table(columns=cols, data=[[str(s.get(c)) for c in cols] for s in logged])
            self.wandb.log(payload, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _sample_md(s: dict) -> str:
    head = ", ".join(f"{k}={s[k]}" for k in ("id", "gold", "accuracy", "d", "t", "acc_dft") if s.get(k) is not None)
    return f"**{head}**\n\n    " + str(s.get("completion", "")).replace("\n", "\n    ")


__all__ = ["REPORTERS", "RunLog", "check_reporters", "step_row", "trim_jsonl"]
