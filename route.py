"""Proactive routing from the command line: a shim over prp/commands/route.py (also installed as `prp-route`)."""
try:
    from prp.commands.route import build_parser, cli, main  # noqa: F401  (tests and users import them from here)
except ModuleNotFoundError as exc:  # a Python without the project installed: one line, not a traceback
    from prp.core.cli import not_installed

    raise SystemExit(not_installed("route.py", exc)) from None

if __name__ == "__main__":
    raise SystemExit(cli())
