"""`python -m prp.serve`: the OpenAI-compatible server of a local model (see prp.route.serve)."""
from prp.core.cli import run_main
from prp.route.serve import main

if __name__ == "__main__":
    raise SystemExit(run_main(main))
