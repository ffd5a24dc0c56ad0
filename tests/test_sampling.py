"""The sampler's exact draw (``generation/sampling.draw``): the distribution asked for, never an impossible token."""

import math

import torch

from elastic_reasoning.generation import sampling
from elastic_reasoning.generation.sampling import draw


def test_draw_matches_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0, 1e-3])
    probs = probs / probs.sum()
    n = 60_000
    tokens = draw(probs.repeat(n, 1), torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    assert counts[probs == 0].sum() == 0
    for k in torch.nonzero(probs).flatten().tolist():
        p = float(probs[k])
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[k] - n * p) < 5 * sigma, (k, counts[k], n * p)


def test_draw_is_seeded_and_leaves_the_global_generator_alone():
    probs = torch.softmax(torch.randn(64, 50), dim=-1)
    state = torch.get_rng_state()
    a = draw(probs, torch.Generator().manual_seed(7))
    b = draw(probs, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_draw_rounding_up_to_the_total_falls_back_on_a_possible_token(monkeypatch):
    # u * total == total: searchsorted points past the end; the last tokens have no mass.
    monkeypatch.setattr(sampling.torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw.get("dtype")))
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert draw(probs, None).tolist() == [1, 3]
