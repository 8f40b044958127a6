"""Evaluate PRP on a benchmark: a shim over prp/commands/eval.py (also installed as `prp-eval`)."""
try:
    from prp.commands.eval import build_parser, cli, main  # noqa: F401  (tests and users import them from here)
except ModuleNotFoundError as exc:  # a Python without the project installed: one line, not a traceback
    from prp.core.cli import not_installed

    raise SystemExit(not_installed("eval.py", exc)) from None

if __name__ == "__main__":
    raise SystemExit(cli())
