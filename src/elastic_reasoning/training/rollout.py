"""Budget-constrained rollouts for TRL's ``GRPOTrainer`` (its ``rollout_func`` seam).

The rollout runs a one-pass engine on the policy being trained: thinking is cut at ``t*``, the end of thinking is
forced, the solution gets its own budget ``s*``. Engines (``rollout.engine``): the transformers engine on the
trainer's own model, or vLLM through TRL (``use_vllm``): in ``colocate`` mode on TRL's in-process ``LLM``, in
``server`` mode on a ``vllm serve`` (``trl vllm-serve``) through TRL's client, the budgets travelling as
``vllm_xargs``. TRL pushes the current weights into vLLM before each rollout either way. Every completion token is marked sampled or forced; TRL receives

* ``prompt_ids``, ``completion_ids``, ``logprobs`` (``Completion.logprobs``: each sampled token's log-prob under the
  distribution it was drawn from, what TRL's importance-sampling correction expects; NaN for a forced token, whose
  importance ratio TRL then leaves at 1);
* ``env_mask``: 1 for sampled tokens, 0 for forced ones (unless ``train_on_forced_tokens``), which TRL multiplies
  into its loss mask, so forced tokens add nothing to the policy loss, the KL or the entropy;
* extra columns for the rewards: ``solution`` (text after the end of thinking), ``thinking_ended``,
  ``thinking_truncated``, ``thinking_tokens``, ``solution_tokens``, ``finish_reason`` — the split is passed, not re-parsed, because TRL
  decodes completions with ``skip_special_tokens=True`` and a special ``</think>`` vanishes from that text.

The baselines share everything else: ``vanilla`` decodes plainly up to ``trainer.max_completion_length``;
``truncate`` decodes plainly up to one total budget ``t* + s*``.

Seeds: rollouts of step ``k`` on process ``r`` draw from ``derive_seed(seed, step=k, process=r)`` (and each server
request group from its own slot), which cannot collide across steps, processes or groups (``generation/seeds.py``),
so a resumed run samples exactly what the uninterrupted run sampled (transformers and colocate; in server mode vLLM
seeds each request from it, but the server's batching is outside this process).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..budget import BudgetConfig
from ..generation.record import Completion, SamplingConfig
from ..generation.seeds import derive_seed
from ..generation.transformers_engine import TransformersEngine
from .config import RolloutConfig


def budget_for(rollout: RolloutConfig, max_completion_length: int) -> BudgetConfig:
    """The budget each rollout mode decodes under."""
    common = dict(end_thinking=rollout.end_thinking, start_thinking=rollout.start_thinking)
    if rollout.mode == "elastic":
        return BudgetConfig(thinking_budget=rollout.thinking_budget, solution_budget=rollout.solution_budget,
                            transition=rollout.transition, eos_in_thinking=rollout.eos_in_thinking, **common)
    cap = max_completion_length if rollout.mode == "vanilla" else rollout.thinking_budget + rollout.solution_budget
    return BudgetConfig.plain(cap, **common)  # the same plain decoding as evaluation's truncate baseline


def budgets_for(rollout: RolloutConfig, prompts: list, max_completion_length: int, *, seed: int,
                step: int) -> list[BudgetConfig]:
    """The budget of each prompt entry: ``budget_for`` everywhere, or with ``thinking_budget_mix`` one thinking
    budget per prompt drawn from a hash of (seed, step, prompt text), so the rollouts of a group (which TRL spreads
    over processes) share it and GRPO's advantage compares rollouts of one budget."""
    base = budget_for(rollout, max_completion_length)
    mix = rollout.thinking_budget_mix
    if not mix:
        return [base] * len(prompts)
    import dataclasses
    import hashlib

    out = []
    for prompt in prompts:
        text = prompt if isinstance(prompt, str) else repr(prompt)
        digest = hashlib.blake2b(f"{seed}|{step}|{text}".encode(), digest_size=8).digest()
        out.append(dataclasses.replace(base, thinking_budget=mix[int.from_bytes(digest, "little") % len(mix)]))
    return out


def rollout_columns(completions: list[Completion], train_on_forced_tokens: bool) -> dict[str, list]:
    """The dict TRL expects from a rollout_func, built from engine completions."""
    return {
        "prompt_ids": [c.prompt_ids for c in completions],
        "completion_ids": [c.completion_ids for c in completions],
        "logprobs": [c.logprobs for c in completions],
        "env_mask": [[1] * len(c.completion_ids) if train_on_forced_tokens else list(c.sampled_mask) for c in completions],
        "solution": [c.solution for c in completions],
        "thinking_ended": [c.thinking_ended for c in completions],
        "thinking_truncated": [c.thinking_truncated for c in completions],
        "thinking_tokens": [c.thinking_tokens for c in completions],
        "solution_tokens": [c.solution_tokens for c in completions],
        "finish_reason": [c.finish_reason for c in completions],
    }


def make_rollout_func(rollout: RolloutConfig, seed: int = 0) -> Callable:
    """A TRL ``rollout_func(prompts, trainer) -> dict`` running budget-constrained rollouts."""
    state: dict = {}

    def rollout_func(prompts: list, trainer) -> dict:
        args = trainer.args
        model = trainer.accelerator.unwrap_model(trainer.model)
        step = trainer.state.global_step
        budget = budgets_for(rollout, prompts, args.max_completion_length, seed=seed, step=step)
        sampling = SamplingConfig(
            temperature=args.temperature,
            top_p=args.top_p if args.top_p is not None else 1.0,
            top_k=args.top_k or 0,
            seed=derive_seed(seed, step=step, process=trainer.accelerator.process_index),
        )
        # TRL hands each process its prompts already repeated num_generations times: one completion per entry.
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            if rollout.engine == "vllm":
                completions = _vllm_rollouts(trainer, state, prompts, budget, sampling)
            else:
                engine = state.get("engine")
                if engine is None or engine.model is not model:
                    engine = TransformersEngine(model, trainer.processing_class, max_batch_size=rollout.max_batch_size)
                    state["engine"] = engine
                completions = engine.generate(prompts, budget, sampling, num_samples=1)
        finally:
            model.train(was_training)
        elapsed = time.perf_counter() - start
        _log_rollout_metrics(trainer, completions, elapsed, budget)
        return rollout_columns(completions, rollout.train_on_forced_tokens)

    return rollout_func


def _vllm_rollouts(trainer, state: dict, prompts: list, budget: list[BudgetConfig],
                   sampling: SamplingConfig) -> list[Completion]:
    """Budgeted rollouts in TRL's vLLM: the offline engine in colocate mode, the HTTP client in server mode."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None:
        raise RuntimeError("rollout.engine vllm needs TRL's vLLM (trainer.use_vllm); it is not set up")
    if generation.mode == "colocate":
        from ..generation.vllm_engine import VLLMEngine

        engine = state.get("vllm_engine")
        if engine is None or engine.llm is not generation.llm:
            engine = VLLMEngine(generation.llm)
            state["vllm_engine"] = engine
        return engine.generate(prompts, budget, sampling, num_samples=1)
    from ..generation.vllm_server_engine import VLLMServerEngine

    engine = state.get("vllm_server_engine")
    if engine is None or engine.client is not generation.vllm_client:
        engine = VLLMServerEngine(generation.vllm_client, trainer.processing_class,
                                  max_model_len=getattr(generation, "max_model_length", None))
        state["vllm_server_engine"] = engine
    return engine.generate(prompts, budget, sampling, num_samples=1, seed_step=trainer.state.global_step,
                           seed_process=trainer.accelerator.process_index)


def _log_rollout_metrics(trainer, completions: list[Completion], elapsed: float,
                         budgets: list[BudgetConfig] = ()) -> None:
    """Per-step rollout statistics, logged by TRL beside its own (averaged over processes at each log)."""
    metrics = getattr(trainer, "_metrics", None)
    if metrics is None or not completions:
        return
    n = len(completions)
    mode = "train" if trainer.model.training else "eval"
    values = {
        "rollout/thinking_tokens": sum(c.thinking_tokens for c in completions) / n,
        "rollout/solution_tokens": sum(c.solution_tokens for c in completions) / n,
        "rollout/cut_fraction": sum(c.thinking_truncated for c in completions) / n,
        "rollout/forced_tokens": sum(c.forced_tokens for c in completions) / n,
        "rollout/eos_fraction": sum(c.finish_reason == "stop" for c in completions) / n,
        "rollout/tokens_generated": float(sum(c.total_tokens for c in completions)),
        "rollout/seconds": elapsed,
    }
    used = [b.thinking_budget for b in budgets if b.thinking_budget is not None]
    if used:
        values["rollout/thinking_budget"] = sum(used) / len(used)
    for key, value in values.items():
        metrics[mode][key].append(value)

