"""Token sampling with log-probs, batched: temperature, top-k, top-p, greedy. Shared by the torch engines.

The functions never modify ``logits`` in place. The log-prob they return is the one ``Completion.logprobs`` holds
(see :mod:`.record`): the drawn token's log-probability under the distribution it was drawn from.
"""

from __future__ import annotations

import torch

from .record import SamplingConfig

NEG_INF = float("-inf")


Banned = tuple[torch.Tensor, torch.Tensor]  # (row indices (N, 1), token indices (1, M)): tokens masked per row


def filtered_scores(logits: torch.Tensor, sampling: SamplingConfig, banned: Banned | None = None) -> torch.Tensor:
    """Logits after temperature, bans, top-k and top-p: the distribution tokens are drawn from. (B, V) -> (B, V)."""
    scores = logits / sampling.temperature if not sampling.greedy else logits.clone()
    if banned is not None:
        scores[banned] = NEG_INF  # index assignment: no (B, V) mask built at every step
    if sampling.greedy:
        return scores
    if sampling.top_k and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)  # (B, V)
        probs = sorted_scores.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the most likely token always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, NEG_INF)
    return scores


def sample(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    banned: Banned | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row. Returns (tokens (B,), log-prob of each drawn token (B,))."""
    scores = filtered_scores(logits, sampling, banned)
    if sampling.greedy:
        tokens = scores.argmax(dim=-1)
        picked = scores.gather(1, tokens[:, None]).squeeze(1)
        return tokens, picked - torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)  # (B, V): one pass, as plain sampling does
    tokens = draw(probs, generator)
    return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log()


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from ``probs`` (B, V), exactly, by inverting the cumulative distribution: the first token
    whose cumulative mass exceeds a uniform draw. Same distribution as ``torch.multinomial(probs, 1)``, one uniform
    number per row, and on the CPU about 20 times faster (0.2 ms against 4.4 ms for 128 rows of 1,071 tokens on one
    thread): multinomial was a tenth of every decoding step of the demo's rollouts. (vLLM's sampler avoids
    multinomial too, with an exponential race; drawing B x V exponentials costs as much as multinomial here.)

    A token of probability zero is never drawn: its cumulative mass equals its predecessor's, so it is never the
    first to exceed the draw; a draw that rounds up to the total falls back on the row's last possible token."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)  # (B,)
    last_possible = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(tokens, last_possible)
