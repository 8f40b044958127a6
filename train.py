"""Train the PRP draft model: a shim over prp/commands/train.py (also installed as `prp-train`)."""
from prp.commands.train import main, materialise_specs  # noqa: F401  (tests import them from here)

if __name__ == "__main__":
    from prp.commands.train import cli

    raise SystemExit(cli())
