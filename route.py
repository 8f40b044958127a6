"""Proactive routing from the command line: a shim over prp/commands/route.py (also installed as `prp-route`)."""
from prp.commands.route import build_parser, cli, main  # noqa: F401  (tests and users import them from here)

if __name__ == "__main__":
    raise SystemExit(cli())
