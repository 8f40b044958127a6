"""Train the PRP draft model: a shim over prp/commands/train.py (also installed as `prp-train`)."""
try:
    from prp.commands.train import cli, main, materialise_specs  # noqa: F401  (tests import them from here)
except ModuleNotFoundError as exc:  # a Python without the project installed: one line, not a traceback
    from prp.core.cli import not_installed

    raise SystemExit(not_installed("train.py", exc)) from None

if __name__ == "__main__":
    raise SystemExit(cli())
