"""CI's newest tier: today's releases of every dependency, resolved without the lock.

    python3 scripts/ci_newest.py [--venv .venv-newest] [--lock requirements/lock.txt]

Builds (or refreshes) a cached venv with `torch==2.13.0` (this machine's cap: any other torch request
pulls a CUDA build) and the project's extras upgraded eagerly to the newest releases, plus Hugging Face's
`kernels` (transformers >= 5.25 imports it at start-up). Then it runs the default suite and one short
end-to-end route (the README's `python route.py --tau 2 --pt 0.6` on the embedded demo).

What differs from the lock (the tested set) is printed first. When something fails, each drifted
package the project depends on directly is put back to its locked version, one at a time, and the
failing tests run again: the first whose locked version makes them pass is named as the break
("transformers 5.26.0 breaks ...; the lock's 5.25.0 passes"). Exit status 0 when all passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = os.environ.get("TORCH_PIN", "torch==2.13.0")
EXTRAS = "dev,triton,deepspeed"
ROUTE = ["route.py", "--tau", "2", "--pt", "0.6", "--out", "runs/newest/routes.jsonl"]
UNLOCKED = {"prp", "pip", "setuptools", "wheel"}  # the project itself and the venv's own tools
MAX_SUSPECTS = 8  # reinstall-and-retest rounds at most, so a failing run stays bounded in time


def say(msg: str) -> None:
    print(f"[newest] {msg}", flush=True)


def run(cmd: list[str], **kw) -> int:
    say("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT, **kw).returncode


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path, py: str) -> dict[str, str]:
    """name -> locked version, for the lines whose environment markers hold in the venv's Python."""
    code = ("import json, sys\nfrom packaging.markers import Marker\nout = {}\n"
            "for line in open(sys.argv[1]):\n"
            "    line = line.split('#', 1)[0].strip()\n"
            "    if '==' not in line: continue\n"
            "    req, _, marker = line.partition(';')\n"
            "    if marker.strip() and not Marker(marker.strip()).evaluate(): continue\n"
            "    name, _, version = req.partition('==')\n"
            "    out[name.strip()] = version.strip()\n"
            "print(json.dumps(out))")
    out = subprocess.run([py, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return {canonical(k): v for k, v in json.loads(out.stdout).items()}


def installed(py: str) -> dict[str, str]:
    code = ("import json, importlib.metadata as m\n"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True)
    return {canonical(k): v for k, v in json.loads(out.stdout).items()}


def direct_dependencies() -> list[str]:
    """The project's own requirements (pyproject.toml: dependencies and the CI extras), in file order."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS.split(","):
        reqs += project["optional-dependencies"][extra]
    return [canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs]


def drift(lock: dict[str, str], now: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for every locked package installed at another version, or added."""
    rows = [(n, lock.get(n, "-"), v) for n, v in sorted(now.items()) if lock.get(n) != v and n not in UNLOCKED]
    return [r for r in rows if not (r[0] == "torch" and r[2].split("+")[0] == r[1])]  # +cpu build: same


def failing_tests(py: str, cache: Path) -> tuple[int, list[str]]:
    """Run the default suite; return its status and the node ids that failed (pytest's lastfailed cache)."""
    status = run([py, "-m", "pytest", "-q", "-o", f"cache_dir={cache}", "-m", "not slow", "--doctest-modules",
                  "prp", "tests"])
    lastfailed = cache / "v" / "cache" / "lastfailed"
    return status, sorted(json.loads(lastfailed.read_text())) if lastfailed.exists() else []


def find_break(py: str, suspects: list[tuple[str, str, str]], failed: list[str]) -> str | None:
    """Put each suspect back to its locked version alone; the first that makes `failed` pass broke it."""
    for name, locked, newest in suspects[:MAX_SUSPECTS]:
        if locked == "-":
            continue
        run([py, "-m", "pip", "install", "-q", "--no-deps", f"{name}=={locked}"])
        ok = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *failed]) == 0
        run([py, "-m", "pip", "install", "-q", "--no-deps", f"{name}=={newest}"])  # back to today's release
        if ok:
            return f"{name} {newest} breaks the tests above; the lock's {name} {locked} passes them"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=".venv-newest")
    ap.add_argument("--lock", default="requirements/lock.txt")
    args = ap.parse_args(argv)
    start = time.monotonic()
    venv = ROOT / args.venv
    py = str(venv / "bin" / "python")
    if not Path(py).exists() and run([sys.executable, "-m", "venv", str(venv)]) != 0:
        return 1
    pin = venv / "torch-pin.txt"
    pin.write_text(TORCH_PIN + "\n")
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    for cmd in ([py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                [py, "-m", "pip", "install", "-q", "-c", str(pin), TORCH_PIN],
                [py, "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager", "-c", str(pin),
                 "-e", f".[{EXTRAS}]", "kernels"]):
        if run(cmd, env=env) != 0:
            say("FAILED: the newest releases do not install together (pip's message above names the conflict)")
            return 1
    lock = read_lock(ROOT / args.lock, py)
    now = installed(py)
    rows = drift(lock, now)
    say(f"{len(rows)} installed packages differ from {args.lock}" + (":" if rows else ""))
    for name, locked, newest in rows:
        say(f"  {name}: lock {locked} -> now {newest}")

    cache = venv / "pytest-cache"
    shutil.rmtree(cache, ignore_errors=True)
    status, failed = failing_tests(py, cache)
    route_status = run([py, *ROUTE])
    if status == 0 and route_status == 0:
        say(f"passed under today's releases in {time.monotonic() - start:.0f} s")
        return 0
    if route_status != 0:
        say(f"FAILED: `python {' '.join(ROUTE)}` exited {route_status}")
    if status != 0:
        say(f"FAILED: {len(failed)} tests under today's releases: " + ", ".join(failed[:10]))
        direct = direct_dependencies()
        suspects = sorted((r for r in rows if r[0] in direct), key=lambda r: direct.index(r[0]))
        verdict = find_break(py, suspects, failed) if failed else None
        say("FAILED: " + (verdict or "no single direct dependency's locked version fixes it; differences above"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
