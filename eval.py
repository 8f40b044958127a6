"""Evaluate PRP on a benchmark: a shim over prp/commands/eval.py (also installed as `prp-eval`)."""
from prp.commands.eval import build_parser, cli, main  # noqa: F401  (tests and users import them from here)

if __name__ == "__main__":
    raise SystemExit(cli())
