"""`python -m prp.serve`: the OpenAI-compatible server of a local model (see prp.route.serve)."""
from prp.route.serve import main

if __name__ == "__main__":
    main()
