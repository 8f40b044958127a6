"""Fixtures shared by the test modules."""
import pytest
import torch

from prp.toy.tiny import build_tokenizer


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from 2 threads, and with another process on the second core
    # OpenMP's spin-waits make them ~30x slower (measured: 0.2 ms -> 8 ms per matmul).
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tok():
    """The tiny byte-level BPE tokenizer (deterministic; digits are single tokens)."""
    return build_tokenizer()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny draft (weights perturbed so greedy outputs vary) and target, see route_fixtures."""
    from route_fixtures import build_pair

    return build_pair(tmp_path_factory.mktemp("pair"))
