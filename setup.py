"""Install PRP.  `pip install -e .[dev]` for tests; see the Makefile for the pinned torch."""
from setuptools import find_packages, setup

setup(
    name="prp",
    version="0.1.0",
    description="Proactive Routing Paradigm for efficient visual reasoning (draft/target VLM routing)",
    python_requires=">=3.10",
    # The top-level kernels/ folder ships inside the package as prp.kernels: a top-level
    # package named `kernels` would shadow Hugging Face's own `kernels` package, which
    # transformers probes for.
    packages=find_packages(include=["prp", "prp.*"]) + ["prp.kernels"],
    package_dir={"prp": "prp", "prp.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17",  # lowest tested: make test-lowest
        "safetensors",
        "sympy",
        "numpy",
        "tqdm",
        "pillow",
        "math-verify",
        "pyyaml",
        "matplotlib",
        # the servers (route.py --serve, python -m prp.serve): FastAPI + uvicorn, pydantic request models
        "fastapi",
        "uvicorn",
        "pydantic>=2",
    ],
    extras_require={
        "deepspeed": ["deepspeed", "accelerate"],
        "triton": ["triton"],
        "flash": ["flash-attn"],
        "dev": ["pytest", "hypothesis", "ruff", "selenium", "tensorboard"],  # selenium: the report.html browser test
        "tensorboard": ["tensorboard"],  # train.py --report-to tensorboard
        "wandb": ["wandb"],  # train.py --report-to wandb
        "bench": ["trl"],
    },
)
