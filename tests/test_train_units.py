"""Fast unit tests of the training pieces: DSS token rewrite, advantage map, config, data skips,
presample resumability, checkpoint atomicity."""
from __future__ import annotations

import io
import json
import math
import os
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image

from prp.core.batches import PromptBatch, build_batch
from prp.core.data import drop_unparsable_gold, load_chartqa_train, load_jsonl, load_mmk12
from prp.core.parsing import parse_completion
from prp.train import checkpoint as ckpt_io
from prp.train.config import ConfigError, TrainConfig, load_config, parse_set
from prp.train.groups import apply_substitution, completion_segments, compute_advantages
from prp.train.logs import trim_jsonl
from prp.train.loss import Segment, token_advantage_map
from prp.train.modes import get_mode
from prp.train.presample import openai_sampler, presample, read_cache
from prp.train.rollout import format_score, rewrite_score, trim_at_eos
from prp.train.sampler import epoch_order
from prp.train.step import rating_stats

ROOT = Path(__file__).resolve().parent.parent

JRL = "<target>0.42</target><confidence>0.9</confidence><think>3+5=8</think><answer>$8$</answer>"


def _ids(tok, text):
    return [*tok.encode(text, add_special_tokens=False), tok.convert_tokens_to_ids(tok.eos_token)]


# ---------------------------------------------------------------- DSS token rewrite (Alg. 1 l.13)


def test_rewrite_score_changes_length_and_keeps_the_rest(tok):
    ids = _ids(tok, JRL)
    span = parse_completion(tok.decode(ids, skip_special_tokens=True), "jrl").confidence_span
    new_ids, idx = rewrite_score(ids, tok, span, "0.37")
    assert len(new_ids) == len(ids) + 1  # "0.9" -> "0.37": one more digit token
    text = tok.decode(new_ids, skip_special_tokens=True)
    assert text == JRL.replace("0.9<", "0.37<")
    parsed = parse_completion(text, "jrl")
    assert parsed.confidence == 0.37 and parsed.target == 0.42 and parsed.format_ok
    assert "".join(tok.decode([new_ids[i]]) for i in idx).find("0.37") >= 0
    # Tokens before and after the rewritten piece are untouched.
    tail = len(new_ids) - idx[-1] - 1
    assert new_ids[: idx[0]] == ids[: idx[0]] and tail > 5 and new_ids[-tail:] == ids[-tail:]


def test_apply_substitution_rewrites_both_ratings(tok):
    ids = _ids(tok, JRL)
    new = apply_substitution(ids, tok, mode="jrl", new_d=0.15, new_t=0.8)
    parsed = parse_completion(tok.decode(new, skip_special_tokens=True), "jrl")
    assert (parsed.confidence, parsed.target) == (0.15, 0.8)
    assert new[-1] == ids[-1]  # EOS kept
    same = apply_substitution(ids, tok, mode="jrl", new_d=math.nan, new_t=0.42)  # same string: untouched
    assert same == ids


def test_format_score():
    assert format_score(0.5) == "0.50" and format_score(1.0) == "1.00" and format_score(0.071) == "0.07"


# ---------------------------------------------------------------- advantage map from real completions


def test_advantage_map_from_tiny_tokenizer_completions(tok):
    texts = [JRL, "<target>0.1</target><confidence>0.87</confidence><think>x</think><answer>$2$</answer>"]
    comps = [_ids(tok, t) for t in texts]
    segs = [completion_segments(c, tok, "jrl") for c in comps]
    for c, s, d, t in zip(comps, segs, ("0.9", "0.87"), ("0.42", "0.1"), strict=True):
        assert tok.decode([c[i] for i, x in enumerate(s) if x == Segment.DRAFT]) == d
        assert tok.decode([c[i] for i, x in enumerate(s) if x == Segment.TARGET]) == t
    prompt_len = 5
    prompts = PromptBatch(torch.ones(2, prompt_len, dtype=torch.long), torch.ones(2, prompt_len, dtype=torch.long),
                          torch.zeros(2, prompt_len, dtype=torch.long), None, None)
    batch = build_batch(prompts, comps, pad_id=tok.pad_token_id)
    seg = torch.zeros(batch.input_ids.shape, dtype=torch.long)
    for i, s in enumerate(segs):
        seg[i, prompt_len:prompt_len + len(s)] = torch.tensor(s)
    a_base, a_d, a_t = torch.tensor([0.5, -0.5]), torch.tensor([0.2, -0.2]), torch.tensor([1.0, -1.0])
    w = token_advantage_map(segments=seg, a_base=a_base, a_d=a_d, a_t=a_t, alpha=1.5, beta=2.0)
    assert w[:, :prompt_len].abs().sum() == 0  # prompt: 0
    for i, s in enumerate(segs):
        row = w[i, prompt_len:]
        n_d, n_t = s.count(Segment.DRAFT), s.count(Segment.TARGET)
        n_r = len(s) - n_d - n_t
        for m, kind in enumerate(s):
            expect = {Segment.DRAFT: 1.5 * a_d[i] / n_d, Segment.TARGET: 2.0 * a_t[i] / n_t,
                      Segment.REST: a_base[i] / n_r}[Segment(kind)]
            assert math.isclose(row[m].item(), float(expect), rel_tol=1e-6)
        assert row[len(s):].abs().sum() == 0  # padding: 0
        assert row[len(s) - 1] == a_base[i] / n_r  # the EOS is part of r_i
    assert batch.completion_mask.sum(1).tolist() == [len(c) for c in comps]


def test_trim_at_eos():
    assert trim_at_eos([1, 2, 3], {9}) == ([1, 2, 3], True)
    assert trim_at_eos([1, 9, 9], {9}) == ([1, 9], False)


# ---------------------------------------------------------------- advantages on gathered groups


def _cfg(**kw):
    return TrainConfig(model="m", train_data="d", **kw)


def test_compute_advantages_matches_equations():
    nan = float("nan")
    base = torch.tensor([[2.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    correct = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0]])
    d = torch.tensor([[0.5, 0.9, nan, 0.5], [0.7, 0.7, 0.7, 0.7]], dtype=torch.float64)
    t = torch.tensor([[0.3] * 4, [0.2] * 4], dtype=torch.float64)
    out = compute_advantages(mode="jrl", base_rewards=base, correct=correct, d=d, t=t,
                             acc_tgt=torch.tensor([0.3, 0.9], dtype=torch.float64), valid=torch.tensor([True, True]),
                             cfg=_cfg(mu=0.2, sigma=0.05), generator=torch.Generator().manual_seed(0))
    assert out.acc_dft.tolist() == [0.5, 0.0]
    assert torch.allclose(out.a_base[0], torch.tensor([0.8660, -0.8660, -0.8660, 0.8660]), atol=1e-4)
    assert out.a_base[1].abs().sum() == 0  # zero-std group
    r = torch.tensor([1.0, 0.6, -1.0, 1.0])
    assert torch.allclose(out.a_d[0], r - r.mean())  # Eq. 5 (an invalid rating is -1)
    # group 2: d all 0.7, Acc 0 -> vanishing -> DSS (Eq. 6 sums to zero, d_N kept)
    assert bool(out.dss_d[1]) and not bool(out.dss_d[0])
    assert math.isnan(out.new_d[1, 3]) and not out.new_d[1, :3].isnan().any()
    assert abs(out.a_d[1].sum().item()) < 1e-6
    # t: group 1 exact (no DSS: mean gap 0); group 2 gap 0.7 -> DSS
    assert bool(out.dss_t[1]) and not bool(out.dss_t[0])


def _rank_split_inputs():
    """6 groups of N = 4 (DRL). Groups 1, 4 and 5 have identical ratings far from their accuracy, so
    their advantages vanish and DSS redraws them (Eq. 6): the draws come from one generator in group
    order, so a rank that computed only its own groups would draw different values for groups 4-5."""
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 3, (6, 4), generator=g).float()
    correct = (torch.rand(6, 4, generator=g) > 0.5).float()
    correct[[1, 4, 5]] = torch.tensor([0.0, 0, 0, 0])
    d = torch.rand(6, 4, generator=g, dtype=torch.float64).mul(100).round().div(100)
    d[[1, 4, 5]] = 0.9
    return {"base": base, "correct": correct, "d": d}


def _advantages_on(inputs: dict, gen_seed: int = 3):
    return compute_advantages(mode="drl", base_rewards=inputs["base"], correct=inputs["correct"] > 0.5,
                              d=inputs["d"], t=torch.full_like(inputs["d"], float("nan")),
                              acc_tgt=torch.zeros(len(inputs["d"]), dtype=torch.float64),
                              valid=torch.ones(len(inputs["d"]), dtype=torch.bool), cfg=_cfg(),
                              generator=torch.Generator().manual_seed(gen_seed))


def _rank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """What rl_micro does on one rank: gather every rank's groups, compute, keep this rank's rows."""
    import torch.distributed as dist

    from prp.train.dist import Dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        whole = _rank_split_inputs()
        g = len(whole["d"]) // world
        local = {k: v[rank * g:(rank + 1) * g] for k, v in whole.items()}  # this rank's prompts only
        glob = {k: Dist(rank=rank, world=world).gather(v) for k, v in local.items()}
        adv = _advantages_on(glob)
        rows = slice(rank * g, (rank + 1) * g)
        torch.save({"a_base": adv.a_base[rows], "a_d": adv.a_d[rows], "new_d": adv.new_d[rows],
                    "dss_d": adv.dss_d[rows]}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_one_process_advantages(tmp_path):
    """The claim of prp.train.dist: with each rank holding half the groups, gathering them (Dist.gather,
    gloo) and slicing this rank's rows gives exactly the single-process advantages and DSS draws."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    whole = _advantages_on(_rank_split_inputs())
    assert whole.dss_d.tolist() == [False, True, False, False, True, True]  # the split matters for DSS
    for key in ("a_base", "a_d", "new_d", "dss_d"):  # bit for bit (NaN = no substitution)
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), getattr(whole, key), rtol=0, atol=0,
                                   equal_nan=True, msg=key)
    # the test can fail: a rank computing on its own groups alone draws other DSS values
    alone = _advantages_on({k: v[3:] for k, v in _rank_split_inputs().items()})
    assert not torch.equal(alone.new_d.nan_to_num(-1), whole.new_d[3:].nan_to_num(-1))


def test_invalid_groups_get_no_advantage():
    out = compute_advantages(mode="drl", base_rewards=torch.tensor([[1.0, 0, 0, 0]]),
                             correct=torch.tensor([[1.0, 0, 0, 0]]), d=torch.tensor([[0.9] * 4], dtype=torch.float64),
                             t=torch.full((1, 4), float("nan"), dtype=torch.float64),
                             acc_tgt=torch.zeros(1), valid=torch.tensor([False]), cfg=_cfg(),
                             generator=torch.Generator().manual_seed(0))
    assert out.a_base.abs().sum() == 0 and out.a_d.abs().sum() == 0 and out.new_d.isnan().all()


def test_epoch_order_is_a_deterministic_permutation():
    a = epoch_order(10, seed=0, epoch=1)
    assert sorted(a) == list(range(10)) and a == epoch_order(10, seed=0, epoch=1) != epoch_order(10, seed=0, epoch=2)


# ---------------------------------------------------------------- config


def test_config_tiny_yaml_per_mode_and_overrides():
    cfg = load_config("configs/tiny.yaml", mode="sft")
    assert cfg.mode == "sft" and cfg.sft_rating == "drl" and cfg.num_generations == 4
    cfg = load_config("configs/tiny.yaml", mode="jrl", overrides=parse_set(["alpha=2", "bf16=true", "max_steps=7"]))
    assert (cfg.alpha, cfg.bf16, cfg.max_steps) == (2.0, True, 7)
    # YAML reads "2e-3" (exponent without a dot) as a string: a float field still takes it
    assert load_config("configs/tiny.yaml", overrides=parse_set(["learning_rate=2e-3"])).learning_rate == 0.002


@pytest.mark.parametrize("mode", ["grpo", "drl", "jrl", "sft", "sft-cn", "presample"])
def test_paper_configs_parse(mode):
    cfg = load_config(f"configs/{mode}.yaml")
    assert cfg.mode == mode and cfg.learning_rate in (5e-7, 1e-5) and cfg.max_completion_length == 2048
    assert (cfg.max_prompt_length, cfg.max_pixels, cfg.gradient_accumulation_steps) == (3000, 501760, 5)
    assert cfg.bf16 and cfg.gradient_checkpointing and cfg.alpha == cfg.beta == 1.5


def test_config_errors():
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(overrides={"model": "m", "train_data": "d", "nope": 1})
    with pytest.raises(ValueError, match="multiple of"):
        load_config(overrides={"model": "m", "train_data": "d", "per_device_batch_size": 6})
    with pytest.raises(ValueError, match="integer"):
        load_config(overrides={"model": "m", "train_data": "d", "max_steps": "x"})
    with pytest.raises(ValueError, match="unknown mode"):
        load_config(overrides={"model": "m", "train_data": "d", "mode": "ppo"})


_OK = {"model": "m", "train_data": "d"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("learning_rate", "inf", "learning_rate must be a finite number > 0, got inf"),
    ("learning_rate", "nan", "learning_rate must be a finite number > 0, got nan"),
    ("learning_rate", "0", "learning_rate must be a finite number > 0, got 0.0"),
    ("learning_rate", "-1e-5", "learning_rate must be a finite number > 0"),
    ("max_steps", "-1", "max_steps must be a finite number >= 0, got -1"),
    ("num_epochs", "0", "num_epochs must be a finite number > 0"),
    ("save_every", "0", "save_every must be a finite number >= 1, got 0"),
    ("gradient_accumulation_steps", "0", "gradient_accumulation_steps must be a finite number >= 1"),
    ("temperature", "0", "temperature must be a finite number > 0"),
    ("top_p", "1.5", "top_p must be in [0, 1.0], got 1.5"),
    ("warmup_ratio", "1", "warmup_ratio must be in [0, 1.0), got 1.0"),
    ("data_format", "csv", "data_format 'csv' is not one of jsonl, mmk12, chartqa"),
    ("report_to", "mlflow", "report_to 'mlflow' is not one of tensorboard, wandb"),
])
def test_config_values_checked_up_front(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={**_OK, key: value})
    assert message in str(err.value)


def test_config_modes_table_names_and_extends(tmp_path):
    (tmp_path / "base.yaml").write_text("learning_rate: 1.0e-3\nalpha: 3\nmodes:\n  drl: {alpha: 4, beta: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel: m\ntrain_data: d\nalpha: 5\n"
                                         "modes:\n  drl: {beta: 7}\n")
    cfg = load_config(tmp_path / "child.yaml", mode="drl")
    # base top < child top < base modes.drl < child modes.drl
    assert (cfg.learning_rate, cfg.alpha, cfg.beta) == (1e-3, 4.0, 7.0)
    assert load_config(tmp_path / "child.yaml", mode="grpo").alpha == 5.0
    (tmp_path / "typo.yaml").write_text("model: m\ntrain_data: d\nmodes:\n  dlr: {alpha: 2}\n")
    with pytest.raises(ConfigError, match="unknown mode 'dlr' in the `modes:` table"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="does not exist; pass --config FILE"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")  # reading it would block forever
    for not_a_file in ("fifo.yaml", "."):
        with pytest.raises(ConfigError, match="is not a regular file; pass --config FILE"):
            load_config(tmp_path / not_a_file)
    # report_to as a YAML list
    (tmp_path / "tb.yaml").write_text("model: m\ntrain_data: d\nreport_to: [tensorboard, wandb]\n")
    assert load_config(tmp_path / "tb.yaml").reporters == ["tensorboard", "wandb"]


def test_paper_config_is_one_table_and_rl_modes_start_from_grpo():
    """One file, the per-mode files only preselect the mode; DRL, JRL and sft-cn start from the GRPO run."""
    for mode in ("grpo", "drl", "jrl", "sft", "sft-cn", "presample"):
        assert load_config(f"configs/{mode}.yaml") == load_config("configs/paper.yaml", mode=mode)
    assert load_config("configs/paper.yaml", mode="grpo").output_dir == "runs/grpo"
    for mode in ("drl", "jrl", "sft-cn"):
        assert load_config("configs/paper.yaml", mode=mode).model == "runs/grpo"
    assert load_config("configs/paper.yaml", mode="grpo").model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_model_path_may_be_a_run_folder(tmp_path):
    from prp.train.policy import resolve_model

    for step in (2, 10):
        (tmp_path / "grpo" / f"ckpt-{step}").mkdir(parents=True)
    (tmp_path / "grpo" / "ckpt-12.tmp").mkdir()  # a killed save: never picked
    assert resolve_model(str(tmp_path / "grpo")) == str(tmp_path / "grpo" / "ckpt-10")
    (tmp_path / "grpo" / "config.json").write_text("{}")  # every run writes its resolved training config there
    assert resolve_model(str(tmp_path / "grpo")) == str(tmp_path / "grpo" / "ckpt-10")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "hf")) == str(tmp_path / "hf")
    with pytest.raises(ConfigError, match="pass --model DIR"):
        resolve_model(str(tmp_path / "nope"))


@pytest.mark.parametrize("stage",
                         sorted(p.stem for p in (ROOT / "configs" / "demo").glob("*.yaml") if p.stem != "base"))
def test_demo_stage_configs_load(stage):
    cfg = load_config(ROOT / "configs" / "demo" / f"{stage}.yaml", overrides=_OK)
    assert cfg.num_threads == 1 and not cfg.bf16 and cfg.max_completion_length == 64 and cfg.keep_last == 1
    if cfg.mode != "presample":
        assert cfg.max_steps >= 40 and cfg.per_device_batch_size == 32


def test_demo_drl_stage_recipe():
    """The DRL stage as the demo was built: batch 32 = 8 prompts x N 4, LR 2e-4, 300 steps, 20 warm-up steps."""
    cfg = load_config(ROOT / "configs" / "demo" / "drl.yaml", overrides=_OK)
    assert (cfg.mode, cfg.learning_rate, cfg.max_steps, cfg.num_generations) == ("drl", 2e-4, 300, 4)
    assert round(cfg.warmup_ratio * cfg.max_steps) == 20 and cfg.lr_scheduler == "cosine"
    ablation = load_config(ROOT / "configs" / "demo" / "drl-ablation.yaml", overrides=_OK)
    warmup_steps = round(ablation.warmup_ratio * ablation.max_steps)
    assert (ablation.max_steps, warmup_steps, ablation.learning_rate) == (150, 20, 2e-4)


def test_mode_registry():
    assert get_mode("grpo").ratings == () and get_mode("drl").ratings == ("d",)
    assert get_mode("jrl").needs_acc_tgt and not get_mode("drl").needs_acc_tgt
    assert get_mode("sft-cn").prompt == "target" and get_mode("drl").prompt == "drl"
    assert not get_mode("presample").trains and get_mode("sft").objective.value == "ce"
    with pytest.raises(ValueError, match="unknown mode 'ppo'"):
        get_mode("ppo")


# ---------------------------------------------------------------- run log


def test_trim_jsonl_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"step": 1, "id": "a"}\n{"step": 2, "id": "b"}\n{"step": 3, "id": "c"}\n{"step": 4, "i')
    assert trim_jsonl(path, 2) == 2  # step 3 and the torn line
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b"]
    assert trim_jsonl(tmp_path / "none.jsonl", 2) == 0


# ---------------------------------------------------------------- data: skipped and counted


def _png(path):
    Image.new("RGB", (56, 56), (120, 110, 100)).save(path)


def test_train_data_fifo_is_refused_without_blocking(tmp_path):
    from prp.train.config import ConfigError, TrainConfig
    from prp.train.sampler import resolve_data

    os.mkfifo(tmp_path / "train.jsonl")  # reading it would block forever: no writer ever opens it
    with pytest.raises(ConfigError, match="is not a regular file"):
        resolve_data(TrainConfig(train_data=str(tmp_path / "train.jsonl")))


def test_jsonl_skips_are_counted(tmp_path):
    _png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows = [
        {"id": "a", "image": "ok.png", "question": "q?", "answer": "$3$"},
        {"id": "b", "image": "missing.png", "question": "q?", "answer": "$3$"},
        {"id": "c", "image": "bad.png", "question": "q?", "answer": "$3$"},
        {"id": "d", "image": "ok.png", "question": "  ", "answer": "$3$"},
        {"id": "e", "image": "ok.png", "question": "q?", "answer": ""},
        {"id": "f", "image": "ok.png", "question": "q?", "answer": "$$"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    result = drop_unparsable_gold(load_jsonl(path, require_answer=True))
    assert [r.id for r in result.records] == ["a"]
    assert result.skipped == {"missing_image": 1, "corrupt_image": 1, "empty_question": 1,
                              "missing_answer": 1, "bad_json": 1, "unparsable_answer": 1}


def test_mmk12_and_chartqa_loaders(tmp_path):
    _png(tmp_path / "img.png")
    rows = [{"id": "m1", "subject": "math", "image": "img.png", "question": "x?", "answer": "12"},
            {"id": "m2", "subject": "math", "image": None, "question": "x?", "answer": "12"}]
    (tmp_path / "mmk12.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    mm = load_mmk12(tmp_path / "mmk12.jsonl")
    assert [r.id for r in mm.records] == ["m1"] and mm.records[0].meta["subject"] == "math"
    assert mm.skipped == {"missing_image": 1}
    (tmp_path / "png").mkdir()
    _png(tmp_path / "png" / "c.png")
    (tmp_path / "train_human.json").write_text(json.dumps(
        [{"imgname": "c.png", "query": "Max?", "label": "45"}, {"imgname": "gone.png", "query": "Max?", "label": "1"}]))
    cq = load_chartqa_train(tmp_path / "train_human.json")
    assert [(r.id, r.question, r.answer) for r in cq.records] == [("train_human-0", "Max?", "45")]
    assert cq.skipped == {"missing_image": 1}


def test_parquet_without_pyarrow_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ImportError, match="pyarrow"):
        load_mmk12(tmp_path / "x.parquet")


# ---------------------------------------------------------------- presample


class _Rec:
    def __init__(self, i, answer="$2$"):
        self.id, self.answer, self.image, self.question = f"r{i}", answer, None, "q"

    def load_image(self):
        return None


def test_presample_resumes_and_repairs_a_torn_tail(tmp_path):
    calls = []

    def sampler(chunk):
        calls.extend(r.id for r in chunk)
        return [["<think>.</think><answer>$2$</answer>", "<answer>$3$</answer>"] for _ in chunk]

    cache = tmp_path / "acc.jsonl"
    cache.write_text(json.dumps({"id": "r0", "acc": 1.0, "n": 2}) + "\n" + '{"id": "r1", "ac')  # killed mid-write
    counts = presample([_Rec(i) for i in range(3)] + [_Rec(9, answer="")], sampler, cache, m=2, batch_size=2)
    assert calls == ["r1", "r2", "r9"] and counts["done"] == 2 and counts["no_gold"] == 1
    assert read_cache(cache) == {"r0": 1.0, "r1": 0.5, "r2": 0.5}
    assert all(json.loads(line) for line in cache.read_text().splitlines())  # no torn line left
    calls.clear()
    presample([_Rec(i) for i in range(3)], sampler, cache, m=2)
    assert calls == []  # everything done: nothing resampled, nothing duplicated
    assert len(cache.read_text().splitlines()) == 3


def test_openai_sampler_retries_and_tops_up(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    sent = []

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def opener(req, timeout):
        sent.append((json.loads(req.data), req.headers.get("Authorization"), timeout))
        if len(sent) == 1:
            raise urllib.error.HTTPError(req.full_url, 503, "busy", {}, None)
        n = sent[-1][0]["n"]
        return Resp(json.dumps({"choices": [{"message": {"content": "<answer>$1$</answer>"}}] * min(n, 2)}).encode())

    monkeypatch.setattr("time.sleep", lambda s: None)
    sample = openai_sampler("http://x/v1", "big", m=3, max_new_tokens=8, api_key_env="MY_KEY", timeout_s=7,
                            opener=opener)
    out = sample([_Rec(0)])
    assert out == [["<answer>$1$</answer>"] * 3]
    assert [s[0]["n"] for s in sent] == [3, 3, 1] and sent[0][1] == "Bearer sk-test" and sent[0][2] == 7


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_commit_is_atomic_and_keeps_last(tmp_path):
    for step in (1, 2, 3):
        tmp = ckpt_io.tmp_dir(tmp_path, step)
        ckpt_io.write_state(tmp, trainer_state={"step": step})
        ckpt_io.commit(tmp, keep_last=2)
    half = ckpt_io.tmp_dir(tmp_path, 4)  # a save killed half-way
    (half / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["ckpt-2", "ckpt-3"]
    assert ckpt_io.latest_checkpoint(tmp_path).name == "ckpt-3"
    ckpt_io.remove_stale_tmp(tmp_path)
    assert not half.exists()
    state, training, rng = ckpt_io.read_state(tmp_path / "ckpt-3")
    assert state == {"step": 3} and training is None and "torch" in rng


def test_rating_stats_count_only_ratings_eq4_accepts():
    """A "943" (reward -1 in Eq. 4) is a malformed rating, not one 942 points off: the DSS ablation's
    rating error once read 33.5 in its first window because of such completions."""
    nan = float("nan")
    scores = torch.tensor([[0.2, 943.0, -0.5, nan], [0.4, 0.4, 0.9, 1.0]], dtype=torch.float64)
    stats = rating_stats(scores, torch.tensor([0.0, 1.0]))
    # valid: 0.2 (group 1, alone: no spread), 0.4 0.4 0.9 1.0 (group 2: mean 0.675, pop. std 0.2772)
    assert stats["valid_frac"] == 5 / 8
    assert stats["mae"] == pytest.approx((0.2 + 0.6 + 0.6 + 0.1 + 0.0) / 5)
    assert stats["std"] == pytest.approx(0.277263, abs=1e-6)
    empty = rating_stats(torch.full((1, 4), nan, dtype=torch.float64), torch.tensor([1.0]))
    assert empty["valid_frac"] == 0.0 and math.isnan(empty["mae"]) and math.isnan(empty["std"])


def test_trim_jsonl_drops_unreadable_lines_instead_of_crashing(tmp_path):
    """Issue 26 (9): a non-UTF-8 byte, a 5000-digit number or deep nesting in metrics.jsonl crashed the
    resume until the file was edited by hand.  Lines are split on \\n only: U+2028 inside a string stays."""
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": 1, "note": "a\u2028b\u0085c"}, ensure_ascii=False).encode(), b'{"step": 2}']
    bad = [b'{"step": 1, "x": "caf\xe9"}', b'{"step": 1, "x": ' + b"9" * 5000 + b"}", b"[" * 100_000,
           b'{"step": true}', b'{"step": 1.5}', b'"step"']
    path.write_bytes(b"\n".join([good[0], *bad, good[1], b'{"step": 3}']) + b"\n")
    assert trim_jsonl(path, 2) == len(bad) + 1
    assert path.read_bytes() == b"\n".join(good) + b"\n"  # the kept lines byte for byte


def test_deeply_nested_yaml_config_is_one_line_config_error(tmp_path):
    """Issue 26 (9): a 5000-level nested YAML config was a RecursionError traceback."""
    (tmp_path / "deep.yaml").write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml is nested too deeply"):
        load_config(tmp_path / "deep.yaml")
    with pytest.raises(ConfigError, match="seed: the value is nested too deeply"):  # --set seed=[[[...]]]
        load_config(overrides=parse_set(["seed=" + "[" * 5000 + "]" * 5000]))


def test_deepspeed_config_parser_limits_are_config_errors(tmp_path):
    """A user's --deepspeed-config nested 100,000 levels was a RecursionError traceback."""
    from prp.train.dist import ds_config_for

    for name, data in (("deep.json", b"[" * 100_000), ("list.json", b"[1]"), ("latin1.json", b'{"a": "caf\xe9"}')):
        (tmp_path / name).write_bytes(data)
        cfg = TrainConfig(deepspeed_config=str(tmp_path / name))
        with pytest.raises(ConfigError, match=rf"deepspeed_config .*{name}"):
            ds_config_for(cfg, 1)


def test_paper_config_marks_every_value_the_paper_does_not_give():
    """Issue 28 item 5: a value the paper does not state is marked where it is set (configs/paper.yaml)
    and listed in docs/decisions.md; the paper's own values (Sec. 5) carry no such mark."""
    lines = {line.split(":", 1)[0]: line for line in (ROOT / "configs" / "paper.yaml").read_text().splitlines()
             if line and not line.startswith((" ", "#"))}
    chosen = ("learning_rate", "gradient_accumulation_steps", "max_prompt_length", "temperature", "max_grad_norm",
              "lr_scheduler", "warmup_ratio", "mu", "overlong_cache_length")
    for key in chosen:
        assert "chosen" in lines[key] or "not given" in lines[key] or "not stated" in lines[key], lines[key]
    for key in ("max_completion_length", "max_pixels"):  # "likewise": the line above says C.2 / ChartQA
        assert "likewise" in lines[key]
    for key in ("alpha", "beta", "num_generations", "presample_m", "num_epochs"):  # Sec. 5 gives these
        assert "chosen" not in lines[key] and "not given" not in lines[key]
    cfg = load_config("configs/paper.yaml", mode="drl")
    assert cfg.max_grad_norm == 1.0 and cfg.learning_rate == 5e-7  # the marked values are the ones loaded
    decisions = (ROOT / "docs" / "decisions.md").read_text()
    for needle in ("GRPO stage learning rate 5e-7", "sft-cn (Paradigm 2) learning rate 5e-7", "**ChartQA**",
                   "`max_grad_norm` 1.0", "tau = 2"):
        assert needle in decisions, needle
