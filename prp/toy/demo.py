"""The embedded default: the trained tiny demo shipped under demo/, or an untrained tiny pair.

Only the entry scripts (route.py, eval.py, train.py) and the tests import this: production code in
prp/ never depends on the toy models.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prp.toy.synthetic import build_benchmark
from prp.toy.tiny import save_tiny_pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSpec:
    """Where the embedded default lives and how it is built (one constant to swap).

    `shipped=True`: trained checkpoints committed under `root` (built by scripts/build_demo.py):
    root/models/{draft,target,drl,jrl} and root/data/{test,validation}.jsonl; `draft` names the
    router draft.  `shipped=False`: an untrained tiny pair built once under `root`.
    """

    root: Path = Path("runs/default")
    seed: int = 0
    n_test: int = 100
    n_validation: int = 40
    max_new_tokens: int = 32  # the untrained tiny models never stop on their own
    rating: str = "forced"  # an untrained draft never closes its rating: force the grammar
    shipped: bool = False
    draft: str = "draft"  # sub-folder of root/models used as the router draft
    # sub-folder of root/models whose own answers eval.py's P1 ranks by default (the paper's Sec. 5: the
    # GRPO-trained draft); None: P1 on the router draft's answers
    p1_model: str | None = None


# The trained demo (scripts/build_demo.py): JRL draft + SFT target on the synthetic sum-of-numbers
# benchmark.  The drafts write their rating tags themselves, yet the grammar is forced: the router then
# jumps over the scaffold (prp.route.decode.forced_prefix: 6 forwards instead of 19 for the JRL prefix)
# and the drafts' digits are the ones they write freely, up to the grammar's two decimals (the JRL draft
# writes t = 0.999 on 22 of the first 50 test items, read as 0.99; tests/test_demo.py checks the 50).
SHIPPED_DEMO = DemoSpec(root=Path(__file__).resolve().parents[2] / "demo", n_test=400, n_validation=200,
                        max_new_tokens=48, rating="forced", shipped=True, draft="jrl",
                        p1_model="draft")
UNTRAINED_DEMO = DemoSpec()
DEFAULT_DEMO = SHIPPED_DEMO


def ensure_default_demo(spec: DemoSpec = DEFAULT_DEMO) -> dict[str, Path]:
    """The demo's model and data paths; an untrained spec is built (once) first."""
    root = spec.root
    paths = {
        "draft": root / "models" / spec.draft, "target": root / "models" / "target",
        "data": root / "data" / "test.jsonl", "validation": root / "data" / "validation.jsonl",
    }
    if spec.p1_model:
        paths["p1_model"] = root / "models" / spec.p1_model
    if spec.shipped:
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"the shipped demo is incomplete ({', '.join(missing)}); "
                                    "rebuild it with: python scripts/build_demo.py --out demo")
        return paths
    ready = root / "READY"
    if not ready.exists():
        log.info("building the embedded default under %s (once)", root)
        save_tiny_pair(root / "models", seed=spec.seed)
        build_benchmark(root / "data", seed=spec.seed, sizes={"validation": spec.n_validation, "test": spec.n_test})
        ready.write_text("built by prp.toy.demo.ensure_default_demo\n")
    return paths
