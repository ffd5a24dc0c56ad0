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
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log()
