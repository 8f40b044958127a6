"""LoRA (the paper's App. D): the config block, a LoRA step against a hand-computed update, adapter-only
checkpoints with exact resume, base + adapter = merged model token for token, and the entry points.

Default suite: a toy update by hand, a 2-step LoRA DRL run on the tiny model with an interrupted resume,
the decode-engine equality and the export / route / serve loaders.  Slow: every mode with LoRA, and
DeepSpeed ZeRO-3 + LoRA (two steps on gloo).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("peft")

from test_train_e2e import deepspeed_launch, interrupt_in_step_2_then_resume

from prp.core.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir
from prp.core.cli import UserError
from prp.train.checkpoint import CheckpointError
from prp.train.config import ConfigError, TrainConfig, load_config, parse_set

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
LORA = ["--lora-rank", "4", "--lora-alpha", "8"]


# ---------------------------------------------------------------- config


def test_lora_block_in_yaml_and_flags(tmp_path):
    (tmp_path / "a.yaml").write_text("model: m\ntrain_data: d\nlora:\n  rank: 8\n  alpha: 16\n"
                                     "  target_modules: [q_proj, v_proj]\nmodes:\n  sft: {lora: false}\n")
    cfg = load_config(tmp_path / "a.yaml", mode="drl")
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_modules, cfg.lora_vision) == (8, 16.0, ["q_proj", "v_proj"], False)
    assert load_config(tmp_path / "a.yaml", mode="sft").lora_rank == 0  # one mode fine-tunes every weight
    (tmp_path / "b.yaml").write_text("model: m\ntrain_data: d\nlora: true\n")
    assert load_config(tmp_path / "b.yaml").lora_rank == 16
    assert TrainConfig().lora_rank == 0  # off unless asked for
    assert load_config(TINY, overrides=parse_set(["lora_rank=2", "lora_dropout=0.1"])).lora_dropout == 0.1
    for bad, message in (("lora: 3", "must be a table of values"), ("lora: {rank: -1}", "lora_rank must be"),
                         ("lora: {dropout: 1.5}", "lora_dropout must be in"), ("lora: {ranks: 2}", "lora_ranks"),
                         ("lora: {target_modules: ''}", "lora_target_modules is empty")):
        (tmp_path / "c.yaml").write_text(f"model: m\ntrain_data: d\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "c.yaml")


def test_lora_and_swift_jrl_recipes():
    """configs/lora.yaml: the paper's recipe with the lora block for every mode; configs/jrl-swift.yaml: JRL from
    runs/drl for half of JRL's epochs; the demo recipes of benchmarks/bench_lora.py."""
    for mode in ("grpo", "drl", "jrl", "sft", "sft-cn"):
        cfg, paper = load_config("configs/lora.yaml", mode=mode), load_config("configs/paper.yaml", mode=mode)
        assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_vision) == (16, 32.0, False)
        assert cfg.model == paper.model and cfg.output_dir == f"{paper.output_dir}-lora"
        assert cfg.lora_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    swift, jrl = load_config("configs/jrl-swift.yaml"), load_config("configs/jrl.yaml")
    assert (swift.mode, swift.model, swift.output_dir, swift.lora_rank) == ("jrl", "runs/drl", "runs/jrl-swift", 0)
    assert swift.num_epochs == jrl.num_epochs / 2 and swift.acc_tgt_cache == jrl.acc_tgt_cache
    ok = {"model": "m", "train_data": "d"}
    demo_drl = load_config("configs/demo/drl.yaml", overrides=ok)
    demo_jrl = load_config("configs/demo/jrl.yaml", overrides=ok)
    lora_drl = load_config("configs/app-d/demo-lora-drl.yaml", overrides=ok)
    lora_jrl = load_config("configs/app-d/demo-lora-jrl.yaml", overrides=ok)
    assert (lora_drl.mode, lora_drl.lora_rank, lora_drl.learning_rate) == ("drl", 8, 10 * demo_drl.learning_rate)
    assert (lora_jrl.mode, lora_jrl.lora_rank, lora_jrl.learning_rate) == ("jrl", 8, 10 * demo_jrl.learning_rate)
    assert load_config("configs/app-d/demo-jrl-swift.yaml", overrides=ok) == demo_jrl


# ---------------------------------------------------------------- a LoRA step by hand


class _Toy(torch.nn.Module):
    """A language-model-shaped toy: model.language_model.q_proj (adapted) and model.visual.q_proj (not)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Module()
        self.model.language_model = torch.nn.Module()
        self.model.language_model.q_proj = torch.nn.Linear(3, 2, bias=False)
        self.model.visual = torch.nn.Module()
        self.model.visual.q_proj = torch.nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.model.language_model.q_proj(x) + self.model.visual.q_proj(x)


def test_lora_step_changes_only_the_adapter_and_matches_a_hand_computed_update():
    """Two AdamW steps through prp.train.lora.attach + prp.train.policy.optimizer_step on
    y = W x + (alpha / r) B A x: the base weights and the vision layer never move; step 1 moves only B
    (B starts at 0, so dL/dA = 0); step 2 moves A and B as Adam's formulas say."""
    from prp.train import lora
    from prp.train.policy import Policy, optimizer_step

    toy = _Toy()
    w_lm = toy.model.language_model.q_proj.weight.detach().clone()
    w_vis = toy.model.visual.q_proj.weight.detach().clone()
    cfg = TrainConfig(lora_rank=2, lora_alpha=4.0, lora_target_modules="q_proj")
    assert lora.target_module_names(toy, cfg) == ["model.language_model.q_proj"]  # not the vision tower's
    wrapped = lora.attach(toy, cfg, base=".")
    trainable = {n for n, p in toy.named_parameters() if p.requires_grad}
    assert trainable == {"model.language_model.q_proj.lora_A.default.weight",
                         "model.language_model.q_proj.lora_B.default.weight"}
    layer = toy.model.language_model.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # [r=2, 3], [2, r=2]
    lr, b1, b2, eps, s = 0.1, 0.9, 0.999, 1e-8, 4.0 / 2
    params = [p for p in toy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0)
    policy = Policy(model=toy, engine=None, processor=None, tok=None, eos_id=0, optimizer=opt,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), device=torch.device("cpu"),
                    peft=wrapped)
    x, gy = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[1.0, -3.0]])  # loss = gy . y
    m_a = m_b = v_a = v_b = 0.0
    for t in (1, 2):
        a0, b0 = a.detach().clone(), b.detach().clone()
        (toy(x) * gy).sum().backward()
        # by hand: dL/dB = s * gy^T (A x)^T, dL/dA = s * B^T gy^T x
        g_b = s * gy.T @ (x @ a0.T)
        g_a = s * b0.T @ gy.T @ x
        torch.testing.assert_close(b.grad, g_b)
        torch.testing.assert_close(a.grad, g_a)
        m_a, m_b = b1 * m_a + (1 - b1) * g_a, b1 * m_b + (1 - b1) * g_b
        v_a, v_b = b2 * v_a + (1 - b2) * g_a ** 2, b2 * v_b + (1 - b2) * g_b ** 2
        want_a = a0 - lr * (m_a / (1 - b1 ** t)) / ((v_a / (1 - b2 ** t)).sqrt() + eps)
        want_b = b0 - lr * (m_b / (1 - b1 ** t)) / ((v_b / (1 - b2 ** t)).sqrt() + eps)
        optimizer_step(policy, max_grad_norm=1e9)
        torch.testing.assert_close(a.detach(), want_a)
        torch.testing.assert_close(b.detach(), want_b)
        if t == 1:
            assert torch.equal(a.detach(), a0) and not torch.equal(b.detach(), b0)
    assert torch.equal(layer.base_layer.weight, w_lm) and torch.equal(toy.model.visual.q_proj.weight, w_vis)


# ---------------------------------------------------------------- training runs on the tiny model


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _adapter(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / ADAPTER_WEIGHTS)


def test_lora_drl_run_writes_adapter_checkpoints_and_resumes_bit_exact(tmp_path, monkeypatch, caplog):
    """A LoRA DRL run's checkpoints hold the adapter only; the base's weights stay as they were; a run that
    fails inside step 2 and is --resume'd ends with exactly the adapter of an uninterrupted run; a damaged
    newest adapter falls back to the previous checkpoint; --resume-weights-only keeps the adapter, step and
    schedule with a fresh optimizer; a changed base model is refused."""
    import logging

    from prp.core.modeling import load_model
    from train import main

    common = ["--mode", "drl", "--config", TINY, "--max-steps", "2", "--set", "save_every=1", *LORA]
    ref = tmp_path / "ref"
    assert main([*common, "--output-dir", str(ref)]) == ref / "ckpt-2"
    ckpt = ref / "ckpt-2"
    assert is_adapter_dir(ckpt) and not list(ckpt.glob("model*.safetensors"))
    config = json.loads((ckpt / ADAPTER_CONFIG).read_text())
    base = next(ref.glob("tiny-test-seed0"))
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["r"] == 4
    weights = _adapter(ckpt)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert not any(".visual." in k for k in weights)  # the vision tower is frozen
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in weights.items())  # it learned (B starts at 0)
    # only adapter weights changed: base + adapter has exactly the base's weights around the adapter
    base_params = dict(load_model(base)[0].named_parameters())
    model, _ = load_model(ckpt)
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p, base_params[name.replace(".base_layer", "")]), name
    assert len(_metrics(ref)) == 2

    out = tmp_path / "interrupted"
    interrupt_in_step_2_then_resume(monkeypatch, caplog, main, common, out)
    got = _adapter(out / "ckpt-2")
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in got)

    # the newest adapter damaged: --resume falls back to ckpt-1 and re-trains step 2 to the same adapter
    data = (out / "ckpt-2" / ADAPTER_WEIGHTS).read_bytes()
    (out / "ckpt-2" / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--output-dir", str(out), "--resume"]) == out / "ckpt-2"
    assert any("damaged" in r.getMessage() for r in caplog.records)
    got = _adapter(out / "ckpt-2")
    assert all(torch.equal(got[k], weights[k]) for k in got)

    # weights only: the adapter of ckpt-2, step 2, a fresh optimizer, on to step 3
    wo = ["--mode", "drl", "--config", TINY, "--max-steps", "3", "--output-dir", str(out), *LORA]
    (out / "ckpt-2" / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match="resume-weights-only"):
        main([*wo, "--resume"])
    assert main([*wo, "--resume-weights-only"]) == out / "ckpt-3"
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    assert is_adapter_dir(out / "ckpt-3") and (out / "ckpt-3" / "training_state.pt").is_file()

    # LoRA settings other than the adapter's, or no lora block: one clear line each
    with pytest.raises(ConfigError, match="other LoRA settings"):
        main([*wo[:-4], "--lora-rank", "4", "--lora-alpha", "16", "--max-steps", "4", "--resume"])
    with pytest.raises(ConfigError, match="is a LoRA adapter checkpoint"):
        main(["--mode", "drl", "--config", TINY, "--max-steps", "4", "--output-dir", str(out), "--resume"])
    # the base model changed under the adapter: refused, it would train another model
    base_file = next(out.glob("tiny-test-seed0")) / "model.safetensors"
    save_file(load_file(base_file) | {"extra": torch.zeros(3)}, str(base_file))
    with pytest.raises(ConfigError, match="base model changed"):
        main([*wo[:-6], "--max-steps", "4", "--output-dir", str(out), *LORA, "--resume"])


def test_runs_started_from_an_adapter(tmp_path):
    """Swift JRL from a LoRA-DRL run: with the lora flags the run continues that adapter (at a learning rate
    of 1e-30 its first checkpoint holds exactly the starting adapter; a fresh one would have B = 0); without
    them the adapter is merged and every weight trains (full checkpoints)."""
    from train import main

    lora_run = tmp_path / "lora"
    main(["--mode", "drl", "--config", TINY, "--max-steps", "2", "--output-dir", str(lora_run), *LORA])
    start = _adapter(lora_run / "ckpt-2")
    assert any(v.abs().sum() > 0 for k, v in start.items() if ".lora_B." in k)
    swift = main(["--mode", "jrl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "swift"),
                  "--model", str(lora_run), *LORA, "--set", "learning_rate=1e-30"])
    got = _adapter(swift)
    assert got.keys() == start.keys() and all(torch.equal(got[k], start[k]) for k in got)
    with pytest.raises(ConfigError, match="other LoRA settings"):
        main(["--mode", "jrl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "bad"),
              "--model", str(lora_run), "--lora-rank", "4", "--lora-alpha", "4"])
    final = main(["--mode", "drl", "--config", TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "full"),
                  "--model", str(lora_run)])
    assert (final / "model.safetensors").is_file() and not is_adapter_dir(final)


# ---------------------------------------------------------------- base + adapter = merged, through the engine


@pytest.fixture(scope="module")
def trained_adapter(pair, tmp_path_factory):
    """An adapter on the route fixtures' draft with random, non-zero A and B (a trained one, in effect)."""
    from prp.core.modeling import load_model
    from prp.train import lora

    root = tmp_path_factory.mktemp("adapter")
    model, proc = load_model(pair["draft"])
    cfg = TrainConfig(lora_rank=4, lora_alpha=8.0)
    wrapped = lora.attach(model, cfg, base=str(pair["draft"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lora.save(wrapped, root)
    proc.save_pretrained(root)
    return root


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_base_plus_adapter_equals_merged_token_for_token(pair, trained_adapter, tmp_path, engine):
    """Unmerged base + adapter (what route.py / eval.py / prp.serve load) and the exported merged folder
    give the same greedy tokens through the decode engine (rating prefix, continuation, plain answers);
    the adapter changes them (it is not a no-op)."""
    from prp.commands.export import main as export_main
    from prp.core.modeling import digit_token_ids, load_model, prepare_inputs
    from prp.core.prompts import build_messages
    from prp.route import decode as gen
    from prp.route.engine import set_engine
    from prp.toy.synthetic import render

    merged_dir = export_main([str(trained_adapter), "--out", str(tmp_path / "merged")])
    assert (merged_dir / "config.json").is_file() and not is_adapter_dir(merged_dir)
    runs = {}
    for name, path in (("adapter", trained_adapter), ("merged", merged_dir), ("base", pair["draft"])):
        model, proc = load_model(path)
        set_engine(model, engine)
        msgs = [build_messages(q, mode="jrl", with_image=True) for q in ("What is the sum?", "How many numbers?")]
        inputs = prepare_inputs(proc, msgs, [render([3, 14]), render([5, 7, 1])])
        prefix = gen.generate_prefix(model, proc.tokenizer, inputs, digit_ids=digit_token_ids(proc.tokenizer),
                                     stop_fn=lambda b, ids, text: len(ids) >= 6)
        cont = gen.continue_rows(model, proc.tokenizer, gen.select_rows(prefix.state, [0, 1]), max_new_tokens=12)
        plain = gen.generate(model, proc.tokenizer, inputs, max_new_tokens=16)
        runs[name] = (prefix.tokens, cont, plain)
    assert runs["adapter"] == runs["merged"]
    assert runs["adapter"] != runs["base"]


def test_entry_points_load_an_adapter_folder(pair, trained_adapter, tmp_path, capsys):
    """route.py --draft ADAPTER (base from adapter_config.json, or --base-model), the server's model
    backend, and the one-line errors: a --base-model for a plain model, an adapter without weights."""
    from prp.core.modeling import load_model
    from prp.route.server.backends import ModelBackend, ServeLimits

    moved = tmp_path / "moved"  # an adapter whose adapter_config.json names a base that is gone
    moved.mkdir()
    for f in trained_adapter.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((moved / ADAPTER_CONFIG).read_text())
    (moved / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match="does not exist"):
        load_model(moved)
    model, proc = load_model(moved, base_model=str(pair["draft"]))
    assert any(".lora_A." in n for n, _ in model.named_parameters())  # unmerged
    proc.tokenizer.add_tokens(["[CN]", "[UN]"], special_tokens=True)  # what sft-cn's checkpoints carry
    proc.save_pretrained(moved)
    assert "[CN]" in load_model(moved, base_model=str(pair["draft"]))[1].tokenizer.get_vocab()  # the adapter's
    with pytest.raises(UserError, match="drop --base-model"):
        load_model(pair["draft"], base_model=str(pair["draft"]))
    (moved / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(UserError, match=r"no adapter_model\.safetensors"):
        load_model(moved)
    backend = ModelBackend(str(trained_adapter), ServeLimits())
    assert any(".lora_B." in n for n, _ in backend.model.named_parameters())

    import argparse

    from prp.route.flags import add_router_arguments, build_router

    ap = argparse.ArgumentParser()
    add_router_arguments(ap)
    args = ap.parse_args(["--draft", str(moved.parent / "moved"), "--base-model", str(pair["draft"]),
                          "--target", str(pair["target"]), "--device", "cpu"])
    (moved / ADAPTER_WEIGHTS).write_bytes((trained_adapter / ADAPTER_WEIGHTS).read_bytes())
    router = build_router(args)
    assert any(".lora_A." in n for n, _ in router.model.named_parameters())


def test_eval_cache_identity_of_an_adapter_names_its_base(pair, trained_adapter):
    """eval.py resumes an instance cache only for the same models: an adapter's identity carries its own files
    and the base model's, so a retrained base under the same adapter folder is not mistaken for it."""
    from prp.eval.settings import model_identity

    ident = model_identity(str(trained_adapter))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(ident["files"])
    assert ident["base"] == model_identity(str(pair["draft"]))


def test_export_command_refuses_what_is_not_an_adapter(pair, trained_adapter, tmp_path):
    from prp.commands.export import main as export_main

    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        export_main([str(pair["draft"]), "--out", str(tmp_path / "x")])
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="exists"):  # an export never overwrites
        export_main([str(trained_adapter), "--out", str(tmp_path / "taken")])
    assert not any(tmp_path.glob("*.tmp-*"))


# ---------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grpo", "jrl", "sft", "sft-cn"])
def test_every_mode_trains_an_adapter(mode, tmp_path):
    from train import main

    final = main(["--mode", mode, "--config", TINY, "--max-steps", "2", "--output-dir", str(tmp_path), *LORA])
    assert is_adapter_dir(final) and len(_metrics(tmp_path)) == 2
    assert any(v.abs().sum() > 0 for k, v in _adapter(final).items() if ".lora_B." in k)


@pytest.mark.slow
def test_deepspeed_zero3_lora_two_steps(tmp_path):
    """ZeRO-3 + LoRA, two gloo processes, two steps: adapter checkpoints (rank 0 gathers the adapter only
    into the file), the partitioned optimizer state of the adapter under ds/, then an exact --resume."""
    cmd, env = deepspeed_launch("--num_gpus", "2", "train.py", "--mode", "drl", "--config", TINY, "--max-steps", "2",
                                "--output-dir", str(tmp_path), "--set", "save_every=1", *LORA)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = tmp_path / "ckpt-2"
    assert is_adapter_dir(final) and (final / "ds").is_dir() and len(_metrics(tmp_path)) == 2
    weights = _adapter(final)
    assert weights and all(v.numel() > 0 for v in weights.values())  # gathered, not rank 0's empty partitions
    assert any(v.abs().sum() > 0 for k, v in weights.items() if ".lora_B." in k)
    # --resume under ZeRO-3: the adapter + its partitioned optimizer state, on to step 3
    cmd[cmd.index("--max-steps") + 1] = "3"
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3] and is_adapter_dir(tmp_path / "ckpt-3")


def test_memory_arithmetic_of_bench_lora_by_hand():
    """benchmarks/bench_lora.py's LoRA counts, by hand: r x (in + out) per adapted projection and layer.
    7B (configs/lora.yaml, r 16): hidden 3584, kv 4 x 128 = 512, MLP 18944, 28 layers; the demo draft
    (configs/app-d/demo-lora-drl.yaml, r 8): hidden 96, kv 2 x 24 = 48, MLP 256, 4 layers."""
    sys_path = str(ROOT / "benchmarks")
    import sys

    sys.path.insert(0, sys_path)
    try:
        import bench_lora
    finally:
        sys.path.remove(sys_path)
    rows = {r["shape"]: r for r in bench_lora.memory_rows()}

    def per_layer(h, kv, ffn):  # q, k, v, o, gate, up, down
        return (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + ffn) + (ffn + h)

    assert rows["Qwen2.5-VL-7B"]["lora_params"] == 16 * 28 * per_layer(3584, 512, 18944) == 40_370_176
    assert rows["Qwen2.5-VL-3B"]["lora_params"] == 16 * 36 * per_layer(2048, 256, 11008)
    assert rows["demo draft"]["lora_params"] == 8 * 4 * per_layer(96, 48, 256) == 55_296
    seven = rows["Qwen2.5-VL-7B"]
    assert seven["params"] == 8_292_166_656  # Qwen2.5-VL-7B-Instruct's published size (8.29 B)
    assert seven["full"]["sum"] == 16 * seven["params"]  # fp32 weights + grads + AdamW m, v
    assert seven["lora"]["sum"] == 4 * seven["params"] + 12 * seven["lora_params"]  # grads + m, v of the adapter only
    assert seven["grads_optimizer_share"] == seven["lora_params"] / seven["params"] < 0.10  # the goal
