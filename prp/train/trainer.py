"""Compatibility names: the trainer now lives in prp.train.{dist, sampler, modes, groups, step, policy, logs, loop}.

`from prp.train.trainer import train, Trainer, compute_advantages, ...` keeps working.
"""
from __future__ import annotations

from prp.train.dist import Dist, ds_config_for, setup_dist
from prp.train.groups import GroupAdvantages, apply_substitution, completion_segments, compute_advantages
from prp.train.loop import Trainer, seed_everything, train
from prp.train.policy import NonFiniteError, lr_lambda, resolve_model
from prp.train.sampler import epoch_order, load_records, resolve_data, safe_image
from prp.train.step import SFT_FORMATS, MicroStepResult

__all__ = ["SFT_FORMATS", "Dist", "GroupAdvantages", "MicroStepResult", "NonFiniteError", "Trainer",
           "apply_substitution", "completion_segments", "compute_advantages", "ds_config_for", "epoch_order",
           "load_records", "lr_lambda", "resolve_data", "resolve_model", "safe_image", "seed_everything",
           "setup_dist", "train"]
