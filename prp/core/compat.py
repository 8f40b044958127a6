"""transformers version differences, in one place.

The supported range is declared in pyproject.toml (lowest tested: 5.17, what current GPU images ship;
CI also runs the decode and router tests on it, `make test-lowest`).  Across that range the KV
cache argument of `model.forward` was renamed: 5.17 takes `past_key_values=` and returns
`out.past_key_values`; 5.24 takes `cache=` and returns `out.cache` (the old name is still
accepted there, with a deprecation warning, until 5.40).  Call sites use these helpers instead
of either name.
"""
from __future__ import annotations

import contextlib
import functools
import inspect


@functools.cache
def _cache_name(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """`{"cache": cache}` or `{"past_key_values": cache}`: whichever name `model.forward` declares.

    >>> class New:
    ...     def forward(self, input_ids=None, cache=None): ...
    >>> class Old:
    ...     def forward(self, input_ids=None, past_key_values=None): ...
    >>> cache_kwargs(New(), 1), cache_kwargs(Old(), 1)
    ({'cache': 1}, {'past_key_values': 1})
    """
    return {_cache_name(type(model)): cache}


def output_cache(out):
    """The cache a forward returned (`out.cache` on new releases, `out.past_key_values` on old).

    >>> from types import SimpleNamespace
    >>> output_cache(SimpleNamespace(cache=1)), output_cache(SimpleNamespace(past_key_values=2))
    (1, 2)
    """
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_layer_tensors(cache, layer: int):
    """(keys, values) of one layer of a filled DynamicCache: [B, kv_heads, T, head_dim] each."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # releases before the per-layer classes


@contextlib.contextmanager
def no_zero3_init():
    """Build a model as a plain module while a ZeRO-3 run's HfDeepSpeedConfig is alive.

    With that config alive, transformers partitions every model it constructs (its parameters
    come out empty, size 0), also on direct construction.  The decode engine's inference copy
    must hold full weights, so the config is hidden for the construction (transformers keeps
    it as a module-level weak reference, in 5.17 as in 5.24) and put back afterwards.
    """
    try:
        import transformers.integrations.deepspeed as hf_ds
    except ImportError:  # no accelerate / deepspeed integration: nothing to hide
        yield
        return
    saved = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
