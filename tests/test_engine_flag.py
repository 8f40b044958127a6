"""Issue 14: `--engine eager|static|compiled` on route.py / eval.py (add_router_arguments, build_router)
and on `python -m prp.serve` (ModelBackend); no flag keeps the engine's own default."""
from __future__ import annotations

import argparse

import pytest

from prp.route.engine import engine_for
from prp.route.flags import ENGINE_KINDS, add_router_arguments, build_router


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    add_router_arguments(ap)
    return ap


def test_engine_flag_parses():
    assert _parser().parse_args([]).engine is None  # the default: compiled on CUDA, eager elsewhere
    for kind in ("eager", "static", "compiled"):
        assert _parser().parse_args(["--engine", kind]).engine == kind
    with pytest.raises(SystemExit):
        _parser().parse_args(["--engine", "turbo"])


def test_engine_kinds_are_the_engines():
    assert set(ENGINE_KINDS) == {"eager", "static", "compiled"}


def test_entry_scripts_take_the_flag():
    import eval as eval_script
    import route as route_script

    assert eval_script.build_parser().parse_args(["--bench", "demo", "--engine", "static"]).engine == "static"
    assert route_script.build_parser().parse_args(["--engine", "eager"]).engine == "eager"


def _args(pair, *extra):
    return _parser().parse_args(["--draft", str(pair["draft"]), "--target", str(pair["target"]),
                                 "--device", "cpu", *extra])


def test_build_router_sets_the_engine_on_draft_and_local_target(pair):
    router = build_router(_args(pair, "--engine", "static"))
    for model in (router.model, router.target.model):
        assert model._prp_engine_kind == "static"
        engine = engine_for(model)
        assert engine is not None and not engine.compiled  # static cache, step not compiled


def test_build_router_without_the_flag_keeps_the_default(pair):
    router = build_router(_args(pair))
    assert not hasattr(router.model, "_prp_engine_kind")
    assert engine_for(router.model) is None  # CPU default: the eager loop


def test_serve_model_backend_takes_the_engine(pair):
    from prp.route.server.backends import ModelBackend
    from prp.route.server.limits import ServeLimits

    backend = ModelBackend(str(pair["target"]), ServeLimits(max_tokens=8), engine="static")
    assert backend.model._prp_engine_kind == "static"
