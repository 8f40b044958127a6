"""Issue 27, a new user's first hour: each item of the report replayed, one test per item.

Item 1 (the README's structure) and item 6 (serving semantics) are handled elsewhere.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from route_fixtures import build_queries
from test_commands import load_script, run_command

from prp.core.cli import run_main
from prp.core.modeling import load_model
from prp.route import flags as route_flags
from prp.route import run as route_run
from prp.route.decide import BatchFraction, FixedThreshold
from prp.route.router import Router, RouterConfig
from prp.route.targets import LocalTarget

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
TINY = str(REPO / "configs" / "tiny.yaml")


class Stop(Exception):
    """Raised by a stub where the command would start loading models: what it decided so far is checked."""


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in ("eval.py", "route.py", "train.py")}


@pytest.fixture(scope="module")
def router(pair):
    draft = load_model(pair["draft"])
    model, proc = load_model(pair["target"])
    return Router(draft[0], draft[1], LocalTarget(model, proc, max_new_tokens=2),
                  RouterConfig(mode="drl", rating="forced", max_new_tokens=2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One DRL step of configs/tiny.yaml as a user runs it (a subprocess): (stdout, stderr, output folder)."""
    out = tmp_path_factory.mktemp("run")
    proc = run_command(f"python train.py --mode drl --config {TINY} --max-steps 1 --output-dir {out / 'r'}", out,
                       timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr, out / "r"


# ---- item 2 -------------------------------------------------------------------------------------
def test_2_routing_and_calibration_show_a_progress_bar(router, tmp_path, capsys):
    """route.py on a file and --calibrate print a tqdm bar on stderr: queries done, rate, routed share."""
    data = build_queries(tmp_path / "q", 6)
    route_run.route_file(router, data, tmp_path / "r.jsonl", BatchFraction(0.5), batch_size=3)
    err = capsys.readouterr().err
    assert "route: 100%" in err and "6/6" in err and "query/s" in err, err
    assert "routed=67%" in err, err  # BatchFraction(0.5), batches of 3: floor(1.5 + 0.5) = 2 each, 4 of the 6
    with_gold = tmp_path / "val.jsonl"
    with_gold.write_text("".join(json.dumps({**json.loads(x), "draft_correct": 1, "target_correct": 0}) + "\n"
                                 for x in data.read_text().splitlines()))
    (tmp_path / "images").symlink_to(data.parent / "images")
    route_run.calibrate_on(router, with_gold, p_t=0.5, target_acc=None, batch_size=3)
    err = capsys.readouterr().err
    assert "calibrate: 100%" in err and "6/6" in err and "draft=100%" in err and "target=0%" in err, err


# ---- item 3 -------------------------------------------------------------------------------------
def test_3_a_default_output_is_never_overwritten(scripts, tmp_path, monkeypatch, capsys):
    """`make demo` wrote runs/demo/routes.jsonl; `python route.py --tau 2 --pt 0.6` (run twice, as a user
    pasting the README would) must replace neither it nor its own earlier results."""
    def stop(args):
        raise Stop(args.out)

    monkeypatch.setattr(route_flags, "build_router", stop)
    monkeypatch.chdir(tmp_path)
    demo_out = tmp_path / "runs" / "demo" / "routes.jsonl"
    demo_out.parent.mkdir(parents=True)
    demo_out.write_text("make demo's rows\n")
    outs = []
    for _ in range(2):
        with pytest.raises(Stop) as stopped:
            scripts["route.py"].main(["--tau", "2", "--pt", "0.6"])
        outs.append(Path(str(stopped.value)))
    assert outs[0] != outs[1] and all(o.parent.parent == Path("runs/route") and o.name == "routes.jsonl" for o in outs)
    assert all(o.parent.is_dir() and not o.exists() for o in outs)  # fresh folders, nothing in them to replace
    assert demo_out.read_text() == "make demo's rows\n"
    # a file of one's own: the same fresh folder by default; a name the user chose is theirs to replace
    data = build_queries(tmp_path / "q", 1)
    common = ["--draft", str(DEMO / "models" / "jrl"), "--target", str(DEMO / "models" / "target"),
              "--data", str(data), "--pt", "0.5"]
    with pytest.raises(Stop, match=r"runs/route/.*/routes\.jsonl"):
        scripts["route.py"].main(common)
    with pytest.raises(Stop, match=r"mine\.jsonl"):
        scripts["route.py"].main([*common, "--out", "mine.jsonl"])
    # resuming needs the file's name
    assert run_main(scripts["route.py"].main, [*common, "--resume"], prog="route.py") == 2
    assert "name it with --out FILE" in capsys.readouterr().err


# ---- item 4 -------------------------------------------------------------------------------------
def test_4_a_model_folder_carries_how_it_is_routed_and_trained(scripts, tiny_run, tmp_path, monkeypatch, capsys):
    """--draft demo/models/jrl alone routes with its own settings (forced rating, 48 new tokens), not free /
    1024; train.py --model demo/models/jrl starts from its recipe, not the paper's 2048-token defaults; each
    says so in one line; a train.py checkpoint records its own prp.json."""
    from prp.commands import train as train_command
    from prp.toy.demo import SHIPPED_DEMO

    def stop(args):
        raise Stop(args)

    monkeypatch.setattr(route_flags, "build_router", stop)
    data = build_queries(tmp_path / "q", 2)
    argv = ["--draft", str(DEMO / "models" / "jrl"), "--target", str(DEMO / "models" / "target"), "--data", str(data),
            "--pt", "0.5", "--out", str(tmp_path / "r.jsonl")]
    with pytest.raises(Stop) as stopped:
        scripts["route.py"].main(argv)
    args = stopped.value.args[0]
    assert (args.mode, args.rating, args.max_new_tokens) == ("jrl", SHIPPED_DEMO.rating, SHIPPED_DEMO.max_new_tokens)
    line = capsys.readouterr().out
    assert line.startswith("route.py: settings in effect: --rating forced") and "prp.json" in line, line
    assert "generic defaults: --rating free --max-new-tokens 1024" in line
    with pytest.raises(Stop) as stopped:  # a flag still wins
        scripts["route.py"].main([*argv, "--rating", "free"])
    assert stopped.value.args[0].rating == "free"
    capsys.readouterr()
    with pytest.raises(Stop) as stopped:  # eval.py reads the same file
        scripts["eval.py"].main(["--bench", "demo", "--data-dir", str(data), "--draft", str(DEMO / "models" / "jrl"),
                                 "--target", str(DEMO / "models" / "target"), "--out-dir", str(tmp_path / "e")])
    assert (stopped.value.args[0].rating, stopped.value.args[0].max_new_tokens) == ("forced", 48)
    assert capsys.readouterr().out.startswith("eval.py: settings in effect:")

    seen = {}
    monkeypatch.setattr("prp.train.loop.train", lambda cfg, **kw: seen.update(cfg=cfg, **kw))
    train_data = data
    train_command.main(["--mode", "drl", "--model", str(DEMO / "models" / "jrl"), "--train-data", str(train_data),
                        "--max-steps", "1", "--output-dir", str(tmp_path / "t")])
    cfg = seen["cfg"]
    assert (cfg.max_completion_length, cfg.gradient_accumulation_steps, cfg.per_device_batch_size) == (64, 1, 32)
    assert cfg.mode == "drl" and cfg.max_steps == 1 and seen["recipe"] == "configs/demo/jrl.yaml"
    line = capsys.readouterr().out
    assert line.startswith("train.py: settings from ") and "max_completion_length 64 (default 2048)" in line, line
    # a model without prp.json: the line names the full-scale defaults it gets
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    train_command.main(["--mode", "drl", "--model", str(bare), "--train-data", str(train_data), "--max-steps", "1",
                        "--output-dir", str(tmp_path / "t2")])
    line = capsys.readouterr().out
    assert "has no prp.json" in line and "max_completion_length 2048" in line, line

    # the checkpoint of a run records its settings (mode, answer budget, recipe values)
    _, _, run = tiny_run
    saved = json.loads((run / "ckpt-1" / "prp.json").read_text())
    tiny = json.loads((run / "config.json").read_text())
    assert saved["mode"] == "drl" and saved["rating"] == "forced"
    assert saved["max_new_tokens"] == tiny["max_completion_length"]
    assert saved["recipe"].endswith("configs/tiny.yaml")
    assert saved["train"]["max_completion_length"] == tiny["max_completion_length"]


def test_4_the_shipped_demo_models_carry_prp_json_written_by_the_build_script(tmp_path):
    """demo/models/*/prp.json is what `python scripts/build_demo.py --settings-only` writes (no retraining)."""
    build = load_script("scripts/build_demo.py")
    for name, stage in build.MODEL_STAGES.items():
        shipped = json.loads((DEMO / "models" / name / "prp.json").read_text())
        (tmp_path / name).mkdir()
        assert json.loads(build.write_model_settings(tmp_path / name, stage, {}).read_text()) == shipped
    assert json.loads((DEMO / "models" / "drl" / "prp.json").read_text())["mode"] == "drl"


# ---- item 5 -------------------------------------------------------------------------------------
def test_5_missing_ratings_go_to_the_target_under_every_policy():
    """Under --pt, two queries without d were kept on the draft when the batch had more missing ratings
    than its routed count; now every missing one is routed (the share grows), under every policy."""
    scores = [None, 0.9, None, 0.5, 0.7, None, 0.8, 0.6]
    for keep in (BatchFraction(0.25).keep(scores), BatchFraction(0.0).keep(scores),
                 BatchFraction(0.25, "target_first").keep(scores), FixedThreshold(0.1).keep(scores),
                 FixedThreshold(None).keep(scores)):
        assert not any(k for k, s in zip(keep, scores, strict=True) if s is None), keep
    assert BatchFraction(0.25).keep(scores) == [False, True, False, True, True, False, True, True]
    assert sum(BatchFraction(0.5).keep(scores)) == 4  # more routed than missing: the count is p_t's


# ---- item 7 -------------------------------------------------------------------------------------
def test_7_training_logs_show_what_tells_training_works(tiny_run):
    """No test markers on stdout; the bar shows the accuracy reward, rating error and DSS rate, not a
    loss of -0.0000; DeepSpeed's own FutureWarnings are filtered, others are not."""
    from prp.train.dist import quiet_deepspeed_warnings
    from prp.train.logs import progress_postfix

    stdout, stderr, _ = tiny_run
    assert "prp-step-start" not in stdout and "prp-checkpoint" not in stdout, stdout
    bar = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("drl: 100%")]
    assert bar and "acc=" in bar[-1] and "dss=" in bar[-1] and "loss=" not in bar[-1], stderr[-2000:]
    shown = progress_postfix({"loss": -0.0, "reward/accuracy": 0.25, "rating_d_mae": 0.4, "rating_t_mae": 0.1,
                              "dss_d_rate": 0.5, "step_time_s": 1.0}, policy_gradient=True)
    assert shown == {"acc": "0.25", "d_err": "0.400", "t_err": "0.100", "dss": "50%", "s": "1.00"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_deepspeed_warnings()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                      "`torch.distributed.all_gather_single` instead.", FutureWarning, stacklevel=1)
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use "
                      "`torch.distributed.reduce_scatter_single` instead.", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


# ---- item 8 -------------------------------------------------------------------------------------
def _instances(n=40):
    """Levels 1, 5, 4, 2, 3 in the demo's order; p1 ranks correctness better than prp (as on the demo)."""
    rows = []
    for i in range(n):
        level = f"level {'15423'[i % 5]}"  # as the demo names its splits
        dc = int(level[-1] in "12") if i % 7 else 1 - int(level[-1] in "12")
        rows.append({"id": f"q{i}", "split": level, "draft_correct": dc, "target_correct": int(level[-1] != "4"),
                     "d": 0.98 if i % 3 == 0 else 0.3, "t": 0.2, "gold": f"${100 + i}$",
                     "scores": {"prp": 0.3 * dc + (i * 37 % 100) / 100, "p1": dc + 0.001 * i}})
    return rows


def test_8_the_report_says_what_it_shows(tmp_path, monkeypatch):
    from prp.eval import plots
    from prp.eval.html import eval_queries, write_eval_html
    from prp.eval.report import build_report

    figures = []
    real_save = plots._save

    def save(fig, path):
        figures.append((Path(path).name, fig))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    rows = _instances()
    paths = build_report(rows, out_dir=tmp_path, p_t_list=[0.5])
    data = json.loads(paths["json"].read_text())
    md = paths["markdown"].read_text()
    # A.7: the heading states the whole filter (rows with d = 0.98 and a low t are not in it)
    assert "## High rating but wrong (A.7): d >= 0.9 and the draft wrong, and where t is known also t >= 0.9 " \
           "and the target wrong" in md
    # per-split plots: levels in order, one fixed accuracy axis
    assert data["splits"] == [f"level {n}" for n in "12345"]
    fig = dict(figures)["per_split_curves.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split()[2] for t in titles] == ["1", "2", "3", "4", "5"], titles
    assert {tuple(ax.get_ylim()) for ax in fig.axes} == {plots.ACCURACY_YLIM}
    # Table 1's Spearman, reversed from the paper's headline: said under the table
    assert data["signals"]["p1"]["spearman"] < data["signals"]["prp"]["spearman"]
    assert "Note: Spearman: p1 (" in md.split("## Table 2")[0]
    page = write_eval_html(tmp_path, rows, report=paths["json"]).read_text()
    assert 'id="spearman-note"' in page and "and the target wrong" in page
    # gold answers without their $...$ wrapper
    assert eval_queries(rows)[0]["gold"] == "100"


def test_8_calibrated_threshold_is_printed_rounded(scripts, tmp_path, monkeypatch, capsys):
    """`calibrated T=-0.6414839205145836`: the printed threshold is rounded; the file keeps the full value."""
    from prp.route.decide import Calibration

    cal = Calibration(threshold=-0.6414839205145836, p_t=0.25, accuracy=0.75, draft_accuracy=0.5,
                      target_accuracy=0.7, n=200, requested={"pt": 0.25}, rule="draft_first")
    monkeypatch.setattr(route_run, "calibrate_on", lambda *a, **k: cal)

    class Built:
        rule = type("R", (), {"name": "draft_first"})()
        extract = None

        def check_policy(self, policy):
            raise Stop

    monkeypatch.setattr(route_flags, "build_router", lambda args: Built())
    data = build_queries(tmp_path / "q", 1)
    with pytest.raises(Stop):
        scripts["route.py"].main(["--draft", "d", "--target", "t", "--data", str(data), "--calibrate", str(data),
                                  "--pt", "0.25", "--out", str(tmp_path / "r.jsonl"), "--rating", "free",
                                  "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "calibrated T=-0.6415 on 200" in out and "-0.64148" not in out, out
    assert json.loads((tmp_path / "r.threshold.json").read_text())["threshold"] == -0.6414839205145836


def test_8_readme_screenshot_is_regenerated_by_a_command(tmp_path):
    """scripts/screenshot_report.py renders a report.html into a PNG (skipped without Chromium)."""
    import shutil

    from prp.eval.html import write_eval_html
    from prp.eval.report import build_report

    script = load_script("scripts/screenshot_report.py")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        with pytest.raises(SystemExit, match=r"install_browser\.sh"):
            script.chromium()
        pytest.skip("Chromium or chromedriver not found: bash scripts/install_browser.sh (as root)")
    rows = _instances()
    report = write_eval_html(tmp_path, rows, report=build_report(rows, out_dir=tmp_path, p_t_list=[0.5])["json"])
    assert script.main(["--report", str(report), "--out", str(tmp_path / "shot.png"), "--width", "640",
                        "--height", "480"]) == 0
    png = (tmp_path / "shot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 640


# ---- item 9 -------------------------------------------------------------------------------------
def test_9_small_ones(scripts, tmp_path):
    from prp.route.batchfile import read_batch_file
    from prp.route.summary import format_summary, summarize

    # the input schema is in docs/routing.md, and the README's command table links it
    routing = (REPO / "docs" / "routing.md").read_text()
    schema = routing.split("## Input files")[1].split("\n## ")[0]
    for needle in ('"id"', '"image"', '"question"', '"answer"', "relative to the JSONL file's folder"):
        assert needle in schema, needle
    readme = (REPO / "README.md").read_text()
    assert "docs/routing.md#input-files" in readme.split("## Command lines")[1].split("\n## ")[0]
    # "text" instead of "question": the missing field is named, and what the line has
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "What is 2+2?"}\n')
    (line,) = read_batch_file(path)
    assert line.error.startswith('missing_question: no "question" field (the line has "id", "text")'), line.error
    # the summary lists every error row it counts
    rows = [{"line": i, "id": f"x{i}", "error": e} for i, e in
            enumerate(["missing_image: a.png", "bad_json: x", "missing_image: b.png", "empty_line"], start=1)]
    text = format_summary(summarize(rows))
    assert text.splitlines()[0] == "queries 4  errors 4 (missing_image 2, bad_json 1, empty_line 1)"
    assert len([x for x in text.splitlines() if x.startswith("  line ")]) == 4
    # one spelling of the target server, the one that works
    docs = "\n".join(p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
    assert "prp.route.serve --" not in docs and "python -m prp.serve --model" in routing
    proc = subprocess.run([sys.executable, "-m", "prp.serve", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--model" in proc.stdout
    # every flag has help, and its default when it has one
    from prp.commands import train as train_command

    parsers = {"route.py": scripts["route.py"].build_parser(), "eval.py": scripts["eval.py"].build_parser(),
               "train.py": train_command.build_parser()}
    for prog, ap in parsers.items():
        text = " ".join(ap.format_help().split())
        for action in ap._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, (prog, action.option_strings)
            if action.default not in (None, False, "") and action.default != argparse.SUPPRESS:
                shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
                assert f"default: {shown}" in text or "default" in action.help, (prog, action.option_strings)
    # kernels/bench_ipr.py writes under runs/ (git-ignored), not into the folder it runs in (asked in a
    # subprocess: importing it sets TRITON_INTERPRET for this whole process)
    proc = subprocess.run([sys.executable, "kernels/bench_ipr.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split()).split("(default ")[-1].split(")")[0]
    assert out == "runs/bench/bench_ipr.json", proc.stdout
    ignored = subprocess.run(["git", "check-ignore", "-q", out], cwd=REPO, check=False)
    assert ignored.returncode == 0


# ---- item 6 (the conflicting-flags part) -----------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--threshold", "0.6", "--pt", "0.3"], "--pt routes a share of each batch, --threshold fixes the threshold"),
    (["--threshold", "0.6", "--calibrate"], "--threshold and --calibrate each choose the threshold"),
    (["--threshold-file", "t.json", "--pt", "0.3"], "--threshold-file fixes the threshold"),
    (["--target-acc", "0.8"], "--target-acc is a calibration goal"),
    (["--calibrate", "--pt", "0.3", "--target-acc", "0.8"], "two calibration goals"),
])
def test_6_conflicting_decision_flags_are_a_usage_error(scripts, capsys, flags, needle):
    """`--threshold 0.6 --pt 0.3` was accepted and --pt silently ignored: one line, exit 2, no model loaded."""
    assert run_main(scripts["route.py"].main, ["--tau", "2", *flags], prog="route.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("route.py: error:") and needle in err[0], err


def test_4_model_recipe_of_a_run_folder_is_its_latest_checkpoints(tmp_path):
    """`train.py --model runs/x` reads the prp.json of the run's latest ckpt-N (as training resolves the
    model), although the run folder holds a config.json of its own (the resolved training config)."""
    from prp.commands.train import model_recipe
    from prp.core.recipe import write_settings

    run = tmp_path / "run"
    (run / "ckpt-1").mkdir(parents=True)
    (run / "ckpt-2").mkdir()
    (run / "config.json").write_text('{"mode": "drl"}')  # train.py's dump of its TrainConfig
    write_settings(run / "ckpt-1", mode="drl", rating="forced", max_new_tokens=32, recipe="a.yaml", train={})
    write_settings(run / "ckpt-2", mode="drl", rating="forced", max_new_tokens=64, recipe="b.yaml", train={})
    assert model_recipe(str(run))["recipe"] == "b.yaml"
    assert model_recipe(str(tmp_path / "nothing")) is None


def test_4_a_checkpoint_never_hands_on_where_its_run_read_and_wrote():
    """prp.json's `train` values: the labelled-set cache of sft-cn (cn_cache) belongs to the run that wrote it."""
    from prp.core.recipe import recipe_values
    from prp.train.config import TrainConfig

    values = recipe_values({**TrainConfig().to_dict(), "cn_cache": "/old/run/cn.jsonl", "acc_tgt_cache": "/old/a",
                            "max_completion_length": 64}, TrainConfig().to_dict())
    assert values == {"max_completion_length": 64}
