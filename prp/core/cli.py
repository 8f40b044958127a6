"""User errors on the command line: one line that names the thing and the fix, exit status 2.

Every entry point (train.py, route.py, eval.py, `python -m prp.serve`, kernels/bench_ipr.py) ends with

    if __name__ == "__main__":
        raise SystemExit(run_main(main))

`run_main` calls `main(argv)` and sorts what escapes it:

- a :class:`UserError`, a `SystemExit("message")` (the scripts' existing one-line refusals), or a
  well-known user-caused exception (:func:`as_user_error`: a missing / unreadable user file, a port
  in use, a YAML syntax error) -> ``prog: error: <one line>`` on stderr, exit status 2 — the status
  and prefix argparse uses for a bad flag, so every refusal of the user's input looks the same;
- anything else is an internal error: it propagates, so Python prints its traceback (status 1).

``-v`` / ``--verbose`` on the command line also prints the traceback of a user error.  Validation
code raises :class:`UserError` where it knows the input is the user's (a model folder, a config
value, a benchmark's data folder); broad exception types such as ValueError are never caught here,
so an internal bug is not disguised as a user mistake.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import sys
import sysconfig
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USER_ERROR = 2  # argparse's status for a usage error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # prp/


class UserError(Exception):
    """A mistake the user can fix.  ``str(err)``: one line naming the thing and the fix.

    ``details``: optional further lines printed under it (a benchmark's download layout, say).
    """

    def __init__(self, message: str, *, details: str = ""):
        super().__init__(message)
        self.details = details


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _is_internal_path(path: str) -> bool:
    """A file of this package or of the Python installation: a failure there is not the user's."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    roots = [_PACKAGE_DIR, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    roots += [Path(p).resolve() for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")} if p]
    return any(resolved.is_relative_to(root) for root in roots)


def as_user_error(exc: BaseException) -> UserError | None:
    """The UserError a user-caused exception stands for; None for anything else (internal).

    >>> str(as_user_error(FileNotFoundError(2, "No such file or directory", "data/x.jsonl")))
    'data/x.jsonl: no such file or directory; check the path (relative paths start at the current folder)'
    >>> as_user_error(ValueError("x")) is None
    True
    """
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, SystemExit):  # raise SystemExit("one line"): the scripts' refusals
        return UserError(_one_line(exc.code)) if isinstance(exc.code, str) else None
    if isinstance(exc, OSError):
        name = exc.filename
        if isinstance(name, (str, os.PathLike)) and not _is_internal_path(os.fspath(name)):
            name = os.fspath(name)
            if isinstance(exc, FileNotFoundError):
                return UserError(f"{name}: no such file or directory; check the path "
                                 "(relative paths start at the current folder)")
            if isinstance(exc, PermissionError):
                return UserError(f"{name}: permission denied; check its permissions or choose another path")
            if isinstance(exc, IsADirectoryError):
                return UserError(f"{name} is a folder where a file was expected; give the file inside it")
            if isinstance(exc, NotADirectoryError):
                return UserError(f"{name}: a part of this path is a file, not a folder; check the path")
        if exc.errno == errno.EADDRINUSE:
            return UserError("address already in use; stop the process holding the port or pass another --port")
        return None
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return UserError(f"not valid YAML: {_one_line(exc)}; fix the config file")
    return None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of every entry point: the docstring epilog as written, and each flag's default after its
    help ("(default: X)"), unless the help already says what the default is or there is none to show
    (None, False, an empty string).

    >>> ap = argparse.ArgumentParser(formatter_class=HelpFormatter)
    >>> _ = ap.add_argument("--tau", type=float, default=2.0, help="JRL scale")
    >>> "JRL scale (default: 2.0)" in " ".join(ap.format_help().split())
    True
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, "", argparse.SUPPRESS) or "default" in text.lower()
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})" if text else f"(default: {shown.replace('%', '%%')})"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count of threads, tries or tokens)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (--tau divides by it; --timeout bounds an attempt)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (--backoff: a wait before a retry)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number >= 0")
    return value


def share(text: str) -> float:
    """argparse type: a share or an accuracy in [0, 1] (--pt, --target-acc)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"{text!r}: give a number between 0 and 1 (0.6 means 60%)")
    return value


def confidence_level(text: str) -> float:
    """argparse type of --confidence: a level in [0.5, 1)."""
    value = float(text)
    if not 0.5 <= value < 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"{text!r}: give a confidence level in [0.5, 1), e.g. 0.95")
    return value


def share_or_target(text: str) -> float | str:
    """argparse type of --target-acc: an accuracy in [0, 1], `target` (the target's own accuracy) or
    `target-T` (T below it, T in [0, 1])."""
    text = text.strip().lower()
    if text == "target":
        return text
    if text.startswith("target-"):
        share(text.removeprefix("target-"))  # the tolerance is a share too
        return text
    return share(text)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port from 0 (any free port) to 65535")
    return value


def check_port_free(host: str, port: int) -> None:
    """Raise a UserError now if `host:port` cannot be bound (before loading any model).

    SO_REUSEADDR, as the server itself binds: a port left in TIME_WAIT is free, one that another
    server listens on is not (Linux refuses the bind with EADDRINUSE).  Port 0 is always free.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use; stop the server holding it "
                                "or pass another --port (0 picks a free one)") from exc
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --host or --port") from exc


def _wants_traceback(argv: Sequence[str]) -> bool:
    args = list(argv)
    args = args[: args.index("--")] if "--" in args else args
    return any(a in ("-v", "--verbose") for a in args)


def report_user_error(prog: str, err: UserError, *, file=None) -> None:
    """``prog: error: <one line>``, then the error's details (if any), on stderr."""
    file = file or sys.stderr
    print(f"{prog}: error: {_one_line(err)}", file=file)
    if err.details:
        print(err.details.rstrip("\n"), file=file)


def not_installed(prog: str, exc: ModuleNotFoundError) -> int:
    """An entry script started by a Python that lacks the project's dependencies (the system Python, a
    venv not activated): one line that says so and how to fix it, and the usage-error status.

    A missing module of this package itself is a bug, not a set-up problem: it is re-raised.
    """
    if (exc.name or "prp").split(".")[0] in ("prp", "prp_kernels"):
        raise exc
    print(f"{prog}: error: this Python ({sys.executable}) lacks a module the project needs ({exc.name!r}); run "
          "`make install`, then `source .venv/bin/activate` (or call .venv/bin/python)", file=sys.stderr)
    return EXIT_USER_ERROR


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, *,
             prog: str | None = None) -> int:
    """Run ``main(argv)`` and return the process exit status (see the module docstring).

    ``main`` returning an int is its status; anything else (None, a summary dict) is success.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0]) or "prp"
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:  # imported lazily: the same answer as a shim's import-time check
        if _wants_traceback(argv):
            traceback.print_exc()
        return not_installed(prog, exc)
    except BaseException as exc:  # sorted below; anything unknown is re-raised as it was
        err = as_user_error(exc)
        if err is None:
            raise
        if _wants_traceback(argv):
            traceback.print_exc()
        report_user_error(prog, err)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = [
    "EXIT_USER_ERROR",
    "UserError",
    "as_user_error",
    "check_port_free",
    "non_negative_float",
    "not_installed",
    "port_number",
    "positive_float",
    "positive_int",
    "report_user_error",
    "run_main",
    "share",
]
