"""Training configuration: one flat dataclass of plain values, loaded from YAML, overridable from the CLI.

A YAML file holds top-level keys (any field below), optionally `extends: <other.yaml>` (a path
relative to this file, read first), and a `modes:` table whose entries override the top level for
one mode, so a single file (configs/paper.yaml, configs/tiny.yaml) can drive every mode:

    mode: drl
    learning_rate: 1.0e-3
    modes:
      sft: {learning_rate: 2.0e-3}

Precedence: dataclass defaults < extended YAML < YAML top level < `modes.<mode>` (extended, then
own) < CLI (`--set key=value` and the explicit flags of train.py).  Values are typed by the
field's default.  `validate` checks every value up front, before any model or data is loaded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prp.core.cli import UserError
from prp.train.modes import MODES

DATA_FORMATS = ("jsonl", "mmk12", "chartqa")
REPORTERS = ("tensorboard", "wandb")


class ConfigError(UserError, ValueError):
    """A user-facing problem with the config, the data or the model paths: train.py prints the message
    (one line naming the value and the fix) and exits with status 2, no traceback."""


@dataclass
class TrainConfig:
    mode: str = "drl"  # one of MODES

    # ---- models and data
    # HF dir of the draft, a run dir (its latest ckpt), or "tiny:<size>" (train.py builds it from `seed`)
    model: str = ""
    target_model: str = ""  # presample: HF dir, "tiny:<size>" or "openai:<model name>" (remote)
    target_base_url: str = ""  # OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
    target_api_key_env: str = "OPENAI_API_KEY"  # the key is read from this env var (never from config)
    target_timeout_s: float = 300.0
    target_retries: int = 3
    train_data: str = ""  # JSONL/JSON/parquet path, or "synthetic:<n>" (train.py generates it into output_dir/data)
    data_format: str = "jsonl"  # jsonl (id,image,question,answer) | mmk12 | chartqa
    image_root: str = ""  # image folder (default: next to the data file; ChartQA: <dir>/png)
    max_records: int = 0  # 0 = all
    acc_tgt_cache: str = ""  # JRL labels (JSONL id -> acc); empty: presample into output_dir
    # Paradigm 2 (sft-cn): "presampled" (the paper, Sec. 2.1 / 5): N answers per question sampled once from
    # the starting model, labelled [CN]/[UN] into cn_cache, then SFT on that fixed set for num_epochs;
    # "online": re-sample from the current policy at every step (no separate stage; on-policy labels)
    sft_cn_sampling: str = "presampled"
    cn_cache: str = ""  # sft-cn's labelled set (JSONL, prp.train.presample.presample_cn); empty: output_dir
    trust_remote_code: bool = False

    # ---- rollout (Alg. 1 l.3)
    num_generations: int = 4  # N
    presample_m: int = 16  # M target samples per record (Alg. 2 l.4)
    presample_batch_size: int = 4  # records per generate call when the target is local
    temperature: float = 1.0
    top_p: float = 1.0
    rollout_engine: str = "hf"  # hf: HF generate on the policy | engine: decode engine on a bf16 (GPU) copy
    max_prompt_length: int = 3000  # tokens; longer prompts are not trained on (counted)
    max_completion_length: int = 2048
    max_pixels: int = 501760
    min_pixels: int = 3136

    # ---- optimisation
    learning_rate: float = 5e-7
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "cosine"  # constant | linear | cosine
    warmup_ratio: float = 0.0
    per_device_batch_size: int = 4  # completions per rank per micro-step; a multiple of N
    gradient_accumulation_steps: int = 5
    num_epochs: float = 3.0
    max_steps: int = 0  # optimizer steps; 0 = from num_epochs
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    freeze_vision_biases: bool = False  # tiny models only (prp.core.modeling.freeze_vision_biases)
    seed: int = 0

    # ---- PRP (Sec. 3, Appendix C)
    alpha: float = 1.5  # weight of the draft-rating tokens (Eq. 7)
    beta: float = 1.5  # weight of the target-rating tokens (Eq. 8)
    dss: bool = True  # Dynamic Score Substitution
    mu: float = 0.2  # vanishing test: |mean(d) - Acc| > mu ...
    sigma: float = 0.05  # ... and std(d) < sigma
    overlong_cache_length: int = 0  # DAPO soft over-length buffer; 0 = off

    # ---- LoRA (App. D: "train a lightweight LoRA on the draft model"); YAML: a `lora:` block, e.g.
    # `lora: {rank: 16, alpha: 32}` (its keys are these fields without `lora_`); lora_rank 0 = every weight trains
    lora_rank: int = 0
    lora_alpha: float = 32.0  # the update is (alpha / rank) * B A
    lora_dropout: float = 0.0
    # module names adapted in the language model (Qwen2.5-VL's attention and MLP projections)
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    lora_vision: bool = False  # also adapt the vision tower's modules of those names (frozen by default)

    # ---- SFT warm start
    sft_rating: str = "none"  # none | drl | jrl: prefix the trace with a rating (and use that prompt); mixed: all three
    sft_rating_value: float = 0.5  # the rating written when the record carries none; < 0: uniform random
    sft_reasoning: str = "reasoning"  # the record field holding the SFT trace (the demo target: reasoning_steps)

    # ---- bookkeeping
    output_dir: str = "runs/train"
    save_every: int = 100  # optimizer steps
    keep_last: int = 2
    resume_weights_only: bool = False  # --resume from a checkpoint's weights, step and schedule; fresh optimizer
    sample_every: int = 10  # write sample completions every K steps
    num_samples_logged: int = 2
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    deepspeed_config: str = ""  # path of a DeepSpeed JSON; used when launched with `deepspeed`
    step_delay_s: float = 0.0  # test hook: sleep at each step start (lets a test kill mid-step)
    report_to: str = ""  # comma-separated: tensorboard (events in output_dir/tensorboard), wandb; empty = none

    @property
    def reporters(self) -> list[str]:
        return [x.strip() for x in self.report_to.split(",") if x.strip() and x.strip() != "none"]

    @property
    def lora_modules(self) -> list[str]:
        return [x.strip() for x in self.lora_target_modules.split(",") if x.strip()]

    def validate(self) -> TrainConfig:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        _check_numbers(self)
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format {self.data_format!r} is not one of {', '.join(DATA_FORMATS)}")
        for name in self.reporters:
            if name not in REPORTERS:
                raise ConfigError(f"report_to {name!r} is not one of {', '.join(REPORTERS)} (or none)")
        if self.mode in ("grpo", "drl", "jrl", "sft-cn"):
            if self.num_generations < 2 and self.mode != "sft-cn":
                raise ConfigError("GRPO needs num_generations >= 2")
            if self.per_device_batch_size % self.num_generations:
                raise ConfigError(
                    f"per_device_batch_size ({self.per_device_batch_size}) must be a multiple of "
                    f"num_generations ({self.num_generations}): each rank generates whole groups"
                )
        if self.sft_rating not in ("none", "drl", "jrl", "mixed"):
            raise ConfigError("sft_rating must be none, drl, jrl or mixed")
        if self.lr_scheduler not in ("constant", "linear", "cosine"):
            raise ConfigError("lr_scheduler must be constant, linear or cosine")
        if self.rollout_engine not in ("hf", "engine"):
            raise ConfigError("rollout_engine must be hf or engine")
        if self.sft_cn_sampling not in ("presampled", "online"):
            raise ConfigError("sft_cn_sampling must be presampled (the paper's fixed labelled set) or online")
        if self.lora_rank and not self.lora_modules:
            raise ConfigError("lora_target_modules is empty; name the modules to adapt, e.g. q_proj,v_proj")
        if not self.model and self.mode != "presample":
            raise ConfigError("config needs `model`: pass --model DIR (a local Hugging Face model folder)")
        if not self.train_data:
            raise ConfigError("config needs `train_data`: pass --train-data FILE "
                              "(JSONL with id, image, question, answer)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# (field, lowest allowed, whether the lowest is allowed): each must also be finite
_LOWER_BOUNDS = (
    ("learning_rate", 0.0, False), ("num_epochs", 0.0, False), ("max_steps", 0, True), ("save_every", 1, True),
    ("gradient_accumulation_steps", 1, True), ("per_device_batch_size", 1, True), ("num_generations", 1, True),
    ("max_completion_length", 1, True), ("max_prompt_length", 1, True), ("temperature", 0.0, False),
    ("top_p", 0.0, False), ("max_grad_norm", 0.0, False), ("warmup_ratio", 0.0, True), ("weight_decay", 0.0, True),
    ("keep_last", 0, True), ("sample_every", 0, True), ("num_samples_logged", 0, True), ("presample_m", 1, True),
    ("presample_batch_size", 1, True), ("max_records", 0, True), ("num_threads", 0, True),
    ("overlong_cache_length", 0, True), ("alpha", 0.0, True), ("beta", 0.0, True), ("mu", 0.0, True),
    ("sigma", 0.0, True), ("target_timeout_s", 0.0, False), ("target_retries", 0, True), ("step_delay_s", 0.0, True),
    ("max_pixels", 1, True), ("min_pixels", 1, True), ("lora_rank", 0, True), ("lora_alpha", 0.0, False),
)


def _check_numbers(cfg: TrainConfig) -> None:
    """Every number finite and in range, so e.g. `learning_rate: inf` stops here, not as a NaN checkpoint.

    >>> _check_numbers(TrainConfig(learning_rate=float("inf")))
    Traceback (most recent call last):
    ...
    prp.train.config.ConfigError: learning_rate must be a finite number > 0, got inf
    """
    for name, low, inclusive in _LOWER_BOUNDS:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise ConfigError(f"{name} must be a finite number {'>=' if inclusive else '>'} {low:g}, got {value}")
    for name, high in (("top_p", 1.0), ("warmup_ratio", 1.0), ("adam_beta1", 1.0), ("adam_beta2", 1.0),
                       ("lora_dropout", 1.0)):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and 0.0 <= value and (value <= high if name == "top_p" else value < high)):
            raise ConfigError(f"{name} must be in [0, {high}{']' if name == 'top_p' else ')'}, got {value}")
    if cfg.min_pixels > cfg.max_pixels:
        raise ConfigError(f"min_pixels ({cfg.min_pixels}) > max_pixels ({cfg.max_pixels})")


def _coerce(name: str, value: Any) -> Any:
    """Type a value by the field's default: YAML and `--set` strings become bool/int/float/str."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown config key {name!r}")
    default = _FIELDS[name].default
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value)
        except RecursionError:
            raise ConfigError(f"{name}: the value is nested too deeply") from None
    if isinstance(value, (list, tuple)) and isinstance(default, str):  # report_to / lora_target_modules: a list
        value = ",".join(str(v) for v in value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            with contextlib.suppress(ValueError):  # not a number: the check below names the field
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    return "" if value is None else str(value)


BLOCKS = ("lora",)  # YAML tables whose keys are fields with this prefix: `lora: {rank: 8}` -> lora_rank: 8
DEFAULT_LORA_RANK = 16  # `lora: true`, or a `lora:` table without `rank`


def flatten_blocks(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`lora: {rank: 8, alpha: 16}` -> `lora_rank: 8, lora_alpha: 16` (other keys as they are); `lora: false`
    or `lora: null` -> `lora_rank: 0` (full fine-tuning, e.g. one mode of a file whose others use LoRA);
    `lora: true` or a table without `rank` -> rank DEFAULT_LORA_RANK.

    >>> flatten_blocks({"lora": {"alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "seed": 1}, "x.yaml")
    {'lora_rank': 16, 'lora_alpha': 8, 'lora_target_modules': 'q_proj,v_proj', 'seed': 1}
    """
    out = {}
    for key, value in values.items():
        if key not in BLOCKS:
            out[key] = value
        elif value is None or value is False:
            out[f"{key}_rank"] = 0
        elif value is True:
            out[f"{key}_rank"] = DEFAULT_LORA_RANK
        elif isinstance(value, dict):
            out[f"{key}_rank"] = DEFAULT_LORA_RANK
            for sub, v in value.items():
                out[f"{key}_{sub}"] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        else:
            raise ConfigError(f"{where}: `{key}:` must be a table of values (e.g. {key}: {{rank: 16, alpha: 32}}) "
                              "or false")
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, dict]]:
    """(top-level values, modes table) of a YAML config, with its `extends:` chain applied."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder or a FIFO (whose read would block)
        raise ConfigError(f"config {path} is not a regular file; pass --config FILE (see configs/*.yaml)")
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist; pass --config FILE (see configs/*.yaml)")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save the config as UTF-8 YAML") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:  # a syntax error: one line naming the file and the place
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix the file there") from exc
    except RecursionError:  # PyYAML composes nested nodes recursively: a 5000-level file overflows it
        raise ConfigError(f"{path} is nested too deeply to be a config (a few levels are all a config has); "
                          "fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    per_mode = raw.pop("modes", None) or {}
    if not isinstance(per_mode, dict) or not all(isinstance(v, dict) or v is None for v in per_mode.values()):
        raise ConfigError(f"{path}: `modes:` must map a mode name to a table of values")
    unknown = sorted(set(per_mode) - set(MODES))
    if unknown:
        raise ConfigError(f"{path}: unknown mode {unknown[0]!r} in the `modes:` table; "
                          f"expected one of {', '.join(MODES)}")
    values: dict[str, Any] = {}
    modes: dict[str, dict] = {}
    base = raw.pop("extends", None)
    if base:
        values, modes = read_yaml(path.parent / base, (*_seen, path.resolve()))
    values.update(flatten_blocks(raw, str(path)))
    for name, table in per_mode.items():
        modes[name] = {**modes.get(name, {}), **flatten_blocks(table or {}, f"{path}: modes.{name}")}
    return values, modes


def load_config(
    path: str | Path | None = None, *, mode: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """defaults < YAML (extends first) < YAML modes.<mode> < overrides.  `mode` (if given) wins over the YAML's.

    >>> load_config(overrides={"mode": "jrl", "alpha": "2", "model": "m", "train_data": "d"}).alpha
    2.0
    """
    values, per_mode = read_yaml(path) if path else ({}, {})
    overrides = dict(overrides or {})
    chosen = mode or overrides.get("mode") or values.get("mode") or TrainConfig.mode
    values.update(per_mode.get(chosen, {}))
    values.update(overrides)
    values["mode"] = chosen
    cfg = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return cfg.validate()


def parse_set(items: list[str] | None) -> dict[str, str]:
    """["alpha=2", "bf16=true"] -> {"alpha": "2", "bf16": "true"} (typed later by `_coerce`)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


__all__ = ["MODES", "ConfigError", "TrainConfig", "dump_config", "load_config", "parse_set", "read_yaml"]
