"""What every backend returns for one completion, and the sampling settings every backend accepts. No torch.

What ``Completion.logprobs`` means, on every engine (``logprobs_kind == "sampling"``):

* a **sampled** token (``sampled_mask[i] == 1``): the log-probability of that token under the distribution the engine
  drew it from: the model's logits divided by the temperature, after the budget's rule for EOS while thinking
  (removed, or its mass moved onto the end-of-thinking token) and after top-k/top-p, renormalised. Under greedy
  decoding (``temperature == 0``) it is the log-softmax of those logits at temperature 1, with no top-k/top-p. This
  is vLLM's ``processed_logprobs`` and the ``sampling_per_token_logps`` TRL's importance-sampling correction compares
  with the trainer's own log-probs;
* a **forced** token (``sampled_mask[i] == 0``): ``NaN``. It was not drawn from any distribution, so it has no
  sampling log-prob (TRL's correction gives a NaN entry the ratio 1, and our rollouts mask forced tokens out of the
  loss).

An engine that cannot report this (a remote endpoint that returns no log-probs) fills every entry with NaN and says
``logprobs_kind == "unavailable"``; nothing else is ever written into the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..budget import BudgetConfig, BudgetRow, FinishReason

_FROM_ROW = object()


LOGPROBS_SAMPLING = "sampling"
"""``Completion.logprobs_kind``: the definition in this module's doc."""
LOGPROBS_UNAVAILABLE = "unavailable"
"""``Completion.logprobs_kind``: the backend gave no log-probs; every entry is NaN."""

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this decode greedily (vLLM's threshold): dividing logits by less overflows float32."""
MIN_TOP_P = 1e-6
"""A positive ``top_p`` below this keeps only the most likely token (what any tiny nucleus keeps)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn: this distribution and no other (a checkpoint's ``generation_config.json`` sampling
    fields never apply unless asked for with :meth:`from_generation_config`). ``temperature == 0`` means greedy."""

    temperature: float = 0.6
    """Softmax temperature; 0 (or anything below 1e-5) = greedy (argmax). Paper default 0.6."""
    top_p: float = 0.95
    """Nucleus sampling mass; 1.0 disables it. Paper default 0.95."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    seed: int | None = None
    """Seed of the sampler's own generator: the same seed gives the same tokens."""

    def __post_init__(self) -> None:
        t, p = self.temperature, self.top_p
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", max(float(p), MIN_TOP_P))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @classmethod
    def from_generation_config(cls, generation_config, *, seed: int | None = None) -> "SamplingConfig":
        """The sampling a checkpoint's ``generation_config.json`` asks for, applied explicitly (``--sampling
        checkpoint``). Only fields every engine honours exactly are taken (temperature, top-p, top-k, do_sample);
        any other sampling field set to a non-neutral value (repetition penalty, n-gram bans, min length, bad words,
        forced BOS/EOS...) is a ``ValueError`` naming it, never silently dropped."""
        get = (generation_config.get if isinstance(generation_config, dict)
               else lambda k, d=None: getattr(generation_config, k, d))
        unsupported = {k: v for k, v in ((k, get(k)) for k in CHECKPOINT_FIELDS_REFUSED)
                       if v is not None and v != CHECKPOINT_FIELDS_REFUSED[k]}
        if unsupported:
            names = ", ".join(f"{k}={v!r}" for k, v in sorted(unsupported.items()))
            raise ValueError(f"the checkpoint's generation config sets {names}, which this project's engines do not "
                             "apply (the budget engines sample exactly temperature/top-p/top-k); drop the field or "
                             "sample with explicit settings instead")
        do_sample = get("do_sample")
        temperature = get("temperature")
        if do_sample is False:
            temperature = 0.0
        return cls(temperature=1.0 if temperature is None else float(temperature),
                   top_p=1.0 if get("top_p") is None else float(get("top_p")),
                   top_k=0 if get("top_k") is None else int(get("top_k")), seed=seed)

    def describe(self) -> dict:
        """What a run records about its sampling."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}


# generation_config fields that change the distribution and that the budget engines refuse, with their neutral value.
CHECKPOINT_FIELDS_REFUSED: dict = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0,
    "min_new_tokens": None, "bad_words_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "diversity_penalty": 0.0, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "guidance_scale": None, "watermarking_config": None, "top_h": None,
}


def budgets_per_prompt(prompts: Sequence, budget: "BudgetConfig | Sequence[BudgetConfig]",
                       num_samples: int) -> list[BudgetConfig]:
    """The budget of each prompt of a ``generate`` call (one for all, or one each), after the checks every backend
    makes of the call."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    budgets = [budget] * len(prompts) if isinstance(budget, BudgetConfig) else list(budget)
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(budgets)} budgets for {len(prompts)} prompts")
    return budgets


@dataclass
class Completion:
    """One budgeted completion. ``completion_ids``, ``sampled_mask`` and ``logprobs`` always have the same length.

    ``logprobs`` follows the one definition in this module's doc (``logprobs_kind`` says which is held): the
    sampling log-prob of each sampled token, NaN for each forced one. ``thinking_ended`` is the one test of "the
    end-of-thinking sequence is in the completion" that rollouts, rewards, scoring and the demo use.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    sampled_mask: list[int]  # 1 = sampled by the model, 0 = forced by the budget
    logprobs: list[float]
    thinking_tokens: int  # thinking content, end-of-thinking sequence excluded (<= thinking budget)
    solution_tokens: int  # sampled after thinking ended, EOS included (<= solution budget)
    forced_tokens: int
    thinking_truncated: bool  # the thinking budget cut the thinking
    thinking_end: str | None  # why thinking stopped: "model" | "budget" | "eos" | None (the model was still thinking)
    finish_reason: str  # "stop" (EOS) | "length" (budget or cap) | "thinking_done" (two-call phase 1)
    end_thinking_index: int | None  # where the end-of-thinking sequence starts (None unless it was all emitted)
    solution_index: int | None  # where the solution starts (None unless the end-of-thinking was all emitted)
    thinking: str = ""
    solution: str = ""
    logprobs_kind: str = LOGPROBS_SAMPLING
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if not (n == len(self.sampled_mask) == len(self.logprobs)):
            raise AssertionError(
                f"unaligned completion: {n} ids, {len(self.sampled_mask)} mask entries, {len(self.logprobs)} logprobs"
            )
        e, s = self.end_thinking_index, self.solution_index
        # A solution continuation (shared-thinking sweeps, two-call phase 2) starts at solution_index 0 with the end
        # of thinking in its prefix: end_thinking_index None.
        if (e is not None and (s is None or not 0 <= e <= s)) or (s is not None and not 0 <= s <= n):
            raise AssertionError(f"indices out of the {n}-token completion: end_thinking_index={e} solution_index={s}")

    @property
    def thinking_ended(self) -> bool:
        """The end-of-thinking sequence is in the completion (written by the model or forced), so a solution part
        exists (possibly empty). False when the completion stopped while thinking, or while the end of thinking was
        still being forced."""
        return self.solution_index is not None

    @classmethod
    def from_row(
        cls,
        row: BudgetRow,
        ids: list[int],
        mask: list[int],
        logprobs: list[float],
        decode: Callable[..., str],
        *,
        logprobs_kind: str = LOGPROBS_SAMPLING,
        prompt_index: int,
        sample_index: int,
        prompt_ids: list[int],
        solution_tokens: int | None = None,
        finish_reason: FinishReason | str | None = None,
        forced_tokens: int | None = None,
        solution_index: int | None = _FROM_ROW,  # type: ignore[assignment]
    ) -> "Completion":
        """The record of a completion whose thinking ``row`` tracked. A solution decoded by a later call (two-call
        mode, shared-thinking sweeps) overrides the solution fields; ``decode`` is the tokenizer's decode."""
        end = row.end_thinking_index
        start = row.solution_index if solution_index is _FROM_ROW else solution_index
        finish = finish_reason if finish_reason is not None else row.finish_reason
        return cls(
            prompt_index=prompt_index,
            sample_index=sample_index,
            prompt_ids=list(prompt_ids),
            completion_ids=ids,
            sampled_mask=mask,
            logprobs=logprobs,
            thinking_tokens=row.thinking_tokens,
            solution_tokens=row.solution_tokens if solution_tokens is None else solution_tokens,
            forced_tokens=row.forced_tokens if forced_tokens is None else forced_tokens,
            thinking_truncated=row.thinking_truncated,
            thinking_end=row.thinking_end.value if row.thinking_end else None,
            finish_reason=FinishReason(finish).value if finish else FinishReason.LENGTH.value,
            end_thinking_index=end,
            solution_index=start,
            thinking=decode(ids[:end] if end is not None else ids, skip_special_tokens=True),
            solution=decode(ids[start:], skip_special_tokens=True) if start is not None else "",
            logprobs_kind=logprobs_kind,
        )

    @property
    def total_tokens(self) -> int:
        return len(self.completion_ids)

    def to_dict(self) -> dict:
        return {**asdict(self), "thinking_ended": self.thinking_ended}
