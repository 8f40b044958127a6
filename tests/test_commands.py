"""The documented commands, run exactly as written, and the user errors they meet (issue 17).

A command runs as a subprocess in a scratch folder (so its outputs, e.g. runs/, land there and
not in the checkout) with the scripts' paths made absolute; nothing else changes.  User errors
are `prog: error: <one line>` on stderr with exit status 2 and no traceback; internal errors
keep theirs.  The long runs (the routed demo, a training step) are marked slow.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prp.core.cli import UserError, as_user_error, check_port_free, run_main
from prp.core.modeling import check_model_dir

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"

# The commands of docs/commands.md, as a user types them ("python" is this interpreter).
ROUTE_DEFAULT = "python route.py --tau 2 --pt 0.6"
EVAL_WITHOUT_DATA = "python eval.py --bench mathvista"
TRAIN_DEFAULT = "python train.py --mode drl"
TRAIN_JRL = ("python train.py --mode jrl", "deepspeed train.py --mode jrl")  # issue 17's two spellings
BENCH_IPR_CPU = "python kernels/bench_ipr.py --batch-sizes 1 --vocab 1024 --reps 3 --no-compile"
SERVE_PORT_IN_USE = "python -m prp.serve --canned hi --port {port}"
ROUTE_SERVE_PORT_IN_USE = "python route.py --serve --port {port} --threshold 0.6"


def run_command(command: str, cwd: Path, *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] in ("python", "deepspeed")
    # this interpreter, or the deepspeed launcher installed beside it
    argv[0] = sys.executable if argv[0] == "python" else str(Path(sys.executable).with_name("deepspeed"))
    if argv[1].endswith(".py"):  # a script of the checkout, run from the scratch folder
        argv[1] = str(REPO / argv[1])
    env = {**os.environ, **(env or {})}
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))  # the launcher's python
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(stderr: str, prog: str, *needles: str, one_line: bool = True) -> str:
    """stderr is `prog: error: ...` (the first line; with one_line, the only one), no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, stderr
    if one_line:
        assert lines == errors, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)
    return errors[0]


def listening_socket() -> tuple[socket.socket, int]:
    """A socket listening on a free loopback port: that port is in use until it is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name.removesuffix('.py')}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return {name: load_script(name) for name in ("eval.py", "route.py", "train.py")}


def test_every_tested_command_is_documented():
    text = (REPO / "docs" / "commands.md").read_text()
    for command in (ROUTE_DEFAULT, EVAL_WITHOUT_DATA, TRAIN_DEFAULT, *TRAIN_JRL, BENCH_IPR_CPU,
                    SERVE_PORT_IN_USE.format(port=8001), ROUTE_SERVE_PORT_IN_USE.format(port=8000)):
        assert f"`{command}`" in text, command


# ------------------------------------------------------------------ the mechanism (prp.core.cli)


def test_readme_quick_start_shows_only_tested_commands():
    """The README's first screen: the commands a new user pastes after activating .venv are exactly the
    ones this file runs as written (the slow tier runs the long ones)."""
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):readme.index("## Set-up and versions")]
    blocks = quick.split("```bash\n")[1:]
    assert [b.split("```")[0].split()[:2] for b in blocks] == [["make", "demo"], ["source", ".venv/bin/activate"]]
    pasted = [line.split("  #")[0].strip() for line in blocks[1].split("```")[0].splitlines()[1:]]
    assert pasted == [ROUTE_DEFAULT, TRAIN_JRL[0], TRAIN_JRL[1], EVAL_WITHOUT_DATA, BENCH_IPR_CPU]


def test_user_errors_are_one_line_status_2_and_v_shows_the_traceback(capsys):
    def main(argv):
        raise UserError("config x.yaml: alpha must be a number\n(got 'a'); fix alpha", details="  more: here")

    assert run_main(main, [], prog="tool") == 2
    err = capsys.readouterr().err
    # the message is folded onto one line; details follow it verbatim
    assert err == "tool: error: config x.yaml: alpha must be a number (got 'a'); fix alpha\n  more: here\n"
    assert run_main(main, ["-v"], prog="tool") == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "tool: error: config x.yaml" in err


def test_internal_errors_keep_their_traceback():
    def main(argv):
        raise ValueError("a bug")  # not a user error: never turned into one line

    with pytest.raises(ValueError, match="a bug"):
        run_main(main, [], prog="tool")
    with pytest.raises(KeyError):
        run_main(lambda argv: {}["missing"], [], prog="tool")


def test_exit_status_of_main(capsys):
    assert run_main(lambda argv: None, []) == 0
    assert run_main(lambda argv: {"summary": 1}, []) == 0  # route.py returns its summary
    assert run_main(lambda argv: 3, []) == 3
    assert run_main(lambda argv: True, []) == 0  # a bool is a value, not a status

    def refuse(argv):
        raise SystemExit("give --threshold, --pt, --calibrate or --threshold-file")

    assert run_main(refuse, [], prog="route.py") == 2  # the scripts' one-line refusals: status 2, prog prefix
    assert capsys.readouterr().err == "route.py: error: give --threshold, --pt, --calibrate or --threshold-file\n"

    def argparse_exit(argv):
        raise SystemExit(2)  # argparse has printed its own message

    with pytest.raises(SystemExit) as stop:
        run_main(argparse_exit, [])
    assert stop.value.code == 2

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, [], prog="tool") == 130


def test_which_exceptions_are_the_users(tmp_path):
    user = as_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "d.jsonl")))
    assert str(user) == (f"{tmp_path / 'd.jsonl'}: no such file or directory; check the path "
                         "(relative paths start at the current folder)")
    assert "permission denied" in str(as_user_error(PermissionError(errno.EACCES, "denied", "/root/x")))
    assert "is a folder" in str(as_user_error(IsADirectoryError(errno.EISDIR, "is a dir", str(tmp_path))))
    assert "port" in str(as_user_error(OSError(errno.EADDRINUSE, "Address already in use")))
    with pytest.raises(yaml.YAMLError) as bad:
        yaml.safe_load("a: [1\nb: 2")
    assert str(as_user_error(bad.value)).startswith("not valid YAML: ")
    # a file of this package missing is an internal error, as is a plain OSError or ValueError
    own = REPO / "prp" / "core" / "no_such_module_file.py"
    assert as_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", str(own))) is None
    assert as_user_error(OSError(errno.EIO, "I/O error")) is None
    assert as_user_error(ValueError("x")) is None
    assert as_user_error(SystemExit(1)) is None


def test_check_port_free():
    sock, port = listening_socket()
    try:
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
    finally:
        sock.close()
    check_port_free("127.0.0.1", port)  # closed: free again
    check_port_free("127.0.0.1", 0)


def test_check_model_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for step in (3, 10, 9):
        (run / f"ckpt-{step}").mkdir(parents=True)
    # a training output folder: the latest checkpoint by step number (10, not the string-largest 9)
    with pytest.raises(UserError, match=r"no config.json \(a training run: its latest checkpoint is .*ckpt-10\)"):
        check_model_dir(run)
    (run / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"no \*\.safetensors weights"):
        check_model_dir(run)
    (run / "model.safetensors").write_bytes(b"")
    check_model_dir(run)
    with pytest.raises(UserError, match="is a file, not a model folder"):
        check_model_dir(run / "config.json")
    with pytest.raises(UserError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist"):
        check_model_dir("run/nope")  # `run` is a local folder: not a hub id
    check_model_dir("Qwen/Qwen2.5-VL-7B-Instruct")  # a hub id: left to from_pretrained


# ------------------------------------------------------------------ eval.py --bench B without data


def test_eval_bench_without_data_says_what_to_get(tmp_path):
    """`python eval.py --bench mathvista`, exactly: one message, status 2, no traceback."""
    proc = run_command(EVAL_WITHOUT_DATA, tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stderr
    first = assert_user_error(
        proc.stderr, "eval.py",
        "DIR/testmini.json", "DIR/images/", "testmini.parquet",  # the files and their layout
        "AI4Math/MathVista", "lupantech/MathVista",  # where to obtain them
        "python eval.py --bench mathvista --data-dir DIR --draft DRAFT_DIR --target TARGET_DIR_OR_URL",
        "python eval.py --bench demo",  # what runs now
        one_line=False)
    assert first.startswith("eval.py: error: --bench mathvista: ")
    assert not list(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("bench, files", [
    ("mathverse", ("DIR/testmini.json", "AI4Math/MathVerse")),
    ("chartqa", ("DIR/test/test_human.json", "DIR/test/test_augmented.json", "DIR/test/png/", "vis-nlp/ChartQA")),
    ("m3cot", ("DIR/test.jsonl", "LightChen233/M3CoT")),
    ("docvqa", ("DIR/val_v1.0.json", "DIR/documents/", "DocVQA")),
])
def test_every_real_benchmark_names_its_files(scripts, capsys, bench, files):
    assert run_main(scripts["eval.py"].main, ["--bench", bench], prog="eval.py") == 2
    assert_user_error(capsys.readouterr().err, "eval.py", *files,
                      f"python eval.py --bench {bench} --data-dir DIR", one_line=False)


def test_eval_data_dir_without_the_files(scripts, capsys, tmp_path):
    argv = ["--bench", "m3cot", "--data-dir", str(tmp_path), "--draft", "d", "--target", "t"]
    assert run_main(scripts["eval.py"].main, argv, prog="eval.py") == 2
    assert_user_error(capsys.readouterr().err, "eval.py", f"no data at {tmp_path}", "DIR/test.jsonl", one_line=False)
    # the annotations are there but no image is: every record skipped -> a user error, not an empty run
    test = tmp_path / "test"
    test.mkdir()
    for split in ("human", "augmented"):
        (test / f"test_{split}.json").write_text(json.dumps([{"imgname": "1.png", "query": "q?", "label": "3"}]))
    argv = ["--bench", "chartqa", "--data-dir", str(tmp_path), "--draft", "d", "--target", "t"]
    assert run_main(scripts["eval.py"].main, argv, prog="eval.py") == 2
    assert_user_error(capsys.readouterr().err, "eval.py", "no usable records", "'missing_image': 2",
                      "--allow-missing-images", one_line=False)


def test_unknown_benchmark_is_an_argparse_error(scripts, capsys):
    with pytest.raises(SystemExit) as stop:
        run_main(scripts["eval.py"].main, ["--bench", "mathvision"], prog="eval.py")
    assert stop.value.code == 2
    assert "invalid choice: 'mathvision'" in capsys.readouterr().err


def test_eval_missing_table_file(scripts, capsys, tmp_path):
    missing = tmp_path / "instances.jsonl"
    assert run_main(scripts["eval.py"].main, ["--bench", "demo", "--table", str(missing)], prog="eval.py") == 2
    assert_user_error(capsys.readouterr().err, "eval.py", f"{missing}: no such file or directory")


def test_eval_table_that_is_a_fifo_or_a_folder(scripts, capsys, tmp_path):
    fifo = tmp_path / "instances.jsonl"
    os.mkfifo(fifo)  # reading it would block forever
    for table in (fifo, tmp_path):
        assert run_main(scripts["eval.py"].main, ["--bench", "demo", "--table", str(table)], prog="eval.py") == 2
        assert_user_error(capsys.readouterr().err, "eval.py", f"--table {table}: not a regular file")


# ------------------------------------------------------------------ route.py / train.py / servers


def test_route_model_folder_that_is_not_a_model(scripts, capsys, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "1", "question": "1+1?", "answer": "2"}\n')
    argv = ["--draft", str(tmp_path), "--target", str(DEMO / "models" / "target"), "--data", str(data), "--pt", "0.5"]
    assert run_main(scripts["route.py"].main, argv, prog="route.py") == 2
    assert_user_error(capsys.readouterr().err, "route.py", f"{tmp_path} is not a model folder: no config.json")


def test_route_missing_data_file_before_loading_models(scripts, capsys, tmp_path):
    argv = ["--draft", str(tmp_path), "--target", str(tmp_path), "--data", str(tmp_path / "q.jsonl"), "--pt", "0.5"]
    assert run_main(scripts["route.py"].main, argv, prog="route.py") == 2
    # the data is named, not the draft folder (which is not a model either): checked before any model loads
    assert_user_error(capsys.readouterr().err, "route.py", f"--data {tmp_path / 'q.jsonl'}: no such file")


def test_route_user_errors_in_the_flags_and_files_are_one_line(scripts, capsys, tmp_path):
    """A directory or FIFO as --data, a malformed --threshold-file, a non-http URL: one line before any model
    loads (the draft folder here is not a model, so reaching the loader would name it instead)."""
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "1", "question": "1+1?", "answer": "2"}\n')
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bad_json, a_list = tmp_path / "t.json", tmp_path / "list.json"
    bad_json.write_text("not json{")
    a_list.write_text("[1, 2]")
    base = ["--draft", str(tmp_path), "--target", str(tmp_path)]
    cases = [
        (["--pt", "0.5", "--data", str(tmp_path)], f"--data {tmp_path}: not a regular file"),
        (["--pt", "0.5", "--data", str(fifo)], f"--data {fifo}: not a regular file"),
        (["--data", str(data), "--threshold-file", str(bad_json)], f"--threshold-file {bad_json}: not a calibration"),
        (["--data", str(data), "--threshold-file", str(a_list)], f"--threshold-file {a_list}: not a calibration"),
        (["--pt", "0.5", "--data", str(data), "--target", "ftp://host/x"],
         "--target ftp://host/x: unsupported URL scheme"),
        (["--pt", "0.5", "--data", str(data), "--confidence", "0.9"], "--confidence qualifies a calibration goal"),
    ]
    for extra, message in cases:
        assert run_main(scripts["route.py"].main, base + extra, prog="route.py") == 2, extra
        assert_user_error(capsys.readouterr().err, "route.py", message)


@pytest.mark.parametrize("flag, value", [("--pt", "1.5"), ("--pt", "-0.1"), ("--pt", "nan"), ("--target-acc", "2"),
                                         ("--tau", "0"), ("--tau", "-1"), ("--tau", "inf"), ("--timeout", "0"),
                                         ("--batch-size", "0"), ("--tries", "0"), ("--port", "99999"),
                                         ("--port", "-1"), ("--threads", "0"), ("--backoff", "-1"),
                                         ("--backoff", "nan"), ("--max-prefix-tokens", "0"),
                                         ("--max-new-tokens", "0"), ("--confidence", "1"),
                                         ("--confidence", "0.3"), ("--confidence", "nan")])
def test_route_out_of_range_numbers_are_usage_errors(scripts, capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        run_main(scripts["route.py"].main, ["--data", "q.jsonl", flag, value], prog="route.py")
    assert stop.value.code == 2
    assert f"argument {flag}: '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--port", "70000"), ("--max-body-bytes", "-1"), ("--max-queue", "0"),
                                         ("--request-timeout", "0"), ("--max-aspect-ratio", "nan"),
                                         ("--backlog", "-5"), ("--max-new-tokens", "0")])
def test_serve_nonsense_limits_are_usage_errors(capsys, flag, value):
    """A NaN aspect limit would switch the check off (every comparison with NaN is false); 0 or less would refuse
    every request: argparse refuses them before the server starts."""
    from prp.route import serve

    with pytest.raises(SystemExit) as stop:
        run_main(serve.main, ["--canned", "hi", "--port", "0", flag, value], prog="prp.serve")
    assert stop.value.code == 2 and f"argument {flag}: '{value}'" in capsys.readouterr().err


def test_route_serve_port_in_use_before_loading_models(scripts, capsys):
    sock, port = listening_socket()
    try:
        argv = ROUTE_SERVE_PORT_IN_USE.format(port=port).split()[2:]
        assert run_main(scripts["route.py"].main, argv, prog="route.py") == 2
    finally:
        sock.close()
    assert_user_error(capsys.readouterr().err, "route.py", f"port {port} on 127.0.0.1 is already in use")


def test_train_bad_yaml_config(scripts, capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("mode: drl\nlearning_rate: [1\nalpha: 2\n")
    assert run_main(scripts["train.py"].main, ["--config", str(config), "--mode", "drl"], prog="train.py") == 2
    # hand-read: the flow sequence opened on line 2 meets "alpha:" at line 3, column 6
    assert_user_error(capsys.readouterr().err, "train.py", f"{config} is not valid YAML at line 3, column 6")


@pytest.mark.parametrize("module", ["prp.serve", "prp.route.serve"])
def test_serve_port_in_use(tmp_path, module):
    """`python -m prp.serve --port P` with P taken: one line, status 2 (before any model loads)."""
    sock, port = listening_socket()
    try:
        proc = run_command(SERVE_PORT_IN_USE.format(port=port).replace("prp.serve", module), tmp_path, timeout=120)
    finally:
        sock.close()
    assert proc.returncode == 2, proc.stderr
    assert_user_error(proc.stderr, "serve.py", f"port {port} on 127.0.0.1 is already in use", "--port")


# ------------------------------------------------------------------ the README's commands, run


def test_bench_ipr_small_cpu_run(tmp_path):
    proc = run_command(BENCH_IPR_CPU, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the default --out, under runs/ (git-ignored), not the folder it runs in
    assert not (tmp_path / "bench_ipr.json").exists()
    result = json.loads((tmp_path / "runs" / "bench" / "bench_ipr.json").read_text())
    assert [c["B"] for c in result["correctness"]] == [1] and result["V"] == 1024
    assert result["correctness"][0]["max_rel_err"] < 1e-2


@pytest.mark.slow
def test_route_embedded_default(tmp_path):
    """`python route.py --tau 2 --pt 0.6`: the 400 demo queries (minutes on 2 cores)."""
    proc = run_command(ROUTE_DEFAULT, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = list((tmp_path / "runs" / "route").glob("*/routes.jsonl"))  # a new run folder, not runs/demo
    assert len(written) == 1 and not (tmp_path / "runs" / "demo").exists()
    rows = written[0].read_text().splitlines()
    assert len(rows) == 400
    routed = sum(json.loads(r)["route"] == "target" for r in rows)
    assert routed == 240  # --pt 0.6 per batch of 20: 12 of each 20 go to the target, 20 batches
    assert "wrote 400 lines" in proc.stdout


@pytest.mark.slow
def test_train_embedded_default_short_run(tmp_path):
    """`python train.py --mode drl` with no config and no model: the embedded default, one step."""
    proc = run_command(TRAIN_DEFAULT, tmp_path, timeout=900, env={"PRP_DEFAULT_STEPS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "runs" / "train-drl" / "ckpt-1"
    check_model_dir(ckpt)  # the step's checkpoint is a model folder route.py / eval.py can load


@pytest.mark.slow
@pytest.mark.parametrize("command", TRAIN_JRL)
def test_train_jrl_embedded_default_short_run(tmp_path, command):
    """Issue 17's first report, `deepspeed train.py --mode jrl` (and the python spelling): Acc_tgt
    presampled with the demo target, then one JRL step (0.7 min / 2.6 min under load on 2 cores)."""
    if command.startswith("deepspeed") and not Path(sys.executable).with_name("deepspeed").exists():
        pytest.skip("the deepspeed extra is not installed")
    proc = run_command(command, tmp_path, timeout=1200, env={"PRP_DEFAULT_STEPS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run = tmp_path / "runs" / "train-jrl"
    assert (run / "acc_tgt.jsonl").read_text().strip()
    check_model_dir(run / "ckpt-1")


@pytest.mark.slow
def test_serve_model_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a config but no weights
    proc = run_command("python -m prp.serve --model . --port 0", tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_user_error(proc.stderr, "serve.py", ". has config.json but no *.safetensors weights")


@pytest.mark.slow
def test_route_serve_port_in_use_subprocess(tmp_path):
    sock, port = listening_socket()
    try:
        proc = run_command(ROUTE_SERVE_PORT_IN_USE.format(port=port), tmp_path, timeout=300)
    finally:
        sock.close()
    assert proc.returncode == 2, proc.stderr
    assert_user_error(proc.stderr, "route.py", f"port {port} on 127.0.0.1 is already in use")


def test_eval_p_t_outside_zero_one_is_a_usage_error(capsys):
    """Tab. 2's shares are checked by argparse, not by a traceback after every model has run."""
    from prp.commands import eval as eval_cmd

    with pytest.raises(SystemExit) as stop:
        run_main(eval_cmd.main, ["--bench", "demo", "--p-t", "0.5", "1.5"], prog="eval.py")
    assert stop.value.code == 2 and "argument --p-t: '1.5'" in capsys.readouterr().err
