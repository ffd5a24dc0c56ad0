"""Budget-constrained rollouts for TRL's ``GRPOTrainer`` (its ``rollout_func`` seam), on one process or many.

The rollout runs a one-pass engine on the policy being trained: thinking is cut at ``t*``, the end of thinking is
forced, the solution gets its own budget ``s*``. Engines (``rollout.engine``): the transformers engine on the
trainer's own model, or vLLM through TRL (``use_vllm``): in ``colocate`` mode on TRL's in-process ``LLM``, in
``server`` mode on a ``vllm serve`` (``trl vllm-serve``) through TRL's client, the budgets travelling as
``vllm_xargs``. TRL pushes the current weights into vLLM before each rollout either way. Every completion token is
marked sampled or forced; TRL receives

* ``prompt_ids``, ``completion_ids``, ``logprobs`` (``Completion.logprobs``: each sampled token's log-prob under the
  distribution it was drawn from, what TRL's importance-sampling correction expects; NaN for a forced token, whose
  importance ratio TRL then leaves at 1);
* ``env_mask``: 1 for sampled tokens, 0 for forced ones (unless ``train_on_forced_tokens``), which TRL multiplies
  into its loss mask, so forced tokens add nothing to the policy loss, the KL or the entropy;
* extra columns for the rewards: ``solution`` (text after the end of thinking), ``thinking_ended``,
  ``thinking_truncated``, ``thinking_tokens``, ``solution_tokens``, ``finish_reason``, and the budgets the completion
  was decoded under (``thinking_budget``, ``solution_budget``) — the split is passed, not re-parsed, because TRL
  decodes completions with ``skip_special_tokens=True`` and a special ``</think>`` vanishes from that text.

The baselines share everything else: ``vanilla`` decodes plainly up to ``trainer.max_completion_length``;
``truncate`` decodes plainly up to one total budget ``t* + s*``.

Many processes (``accelerate launch``). TRL calls the rollout on every process with that process's share of the
generation batch. Each mode follows what TRL's own generation does in the same mode
(``trl/generation/vllm_generation.py``, ``trl/trainer/grpo_trainer.py``):

* ``transformers``: every process decodes its own share on the policy unwrapped with TRL's
  ``unwrap_model_for_generation`` (under DeepSpeed ZeRO-3 the sharded weights are gathered once per rollout, not at
  every decoding step; under FSDP1 the root's parameters are summoned as TRL does);
* ``server``: TRL's ``VLLMClient`` exists on the main process only. Every process's prompts and budgets are
  gathered there, generated there in one call (one request per prompt group, the budgets in ``vllm_xargs``), and the
  completions (ids, sampled/forced masks, log-probs, counts) are broadcast back and sliced per process. An error on
  the main process is broadcast too, so every process stops with it instead of waiting forever;
* ``colocate``: one ``LLM`` per tensor-parallel group; with ``vllm_tensor_parallel_size > 1`` the group's prompts are
  gathered so that every rank of the group runs the same generate call (vLLM's external launcher requires it), and
  each rank keeps its own slice; with ``vllm_enable_sleep_mode`` the weights are re-synced if they were discarded,
  the KV cache is woken before and vLLM put back to sleep (level 2) after the rollout.

Seeds: the rollouts of step ``k`` draw from ``derive_seed(seed, step=k, process=r)`` (``generation/seeds.py``), where
``r`` is the process for the transformers engine, the tensor-parallel group for colocate (all ranks of a group must
sample alike, as TRL seeds its LLM with ``process_index // tensor_parallel_size``), and 0 in server mode, where the
main process generates for everyone and each request group gets its own ``slot``. No two (step, process, slot) share
a seed, so a resumed run samples exactly what the uninterrupted run sampled (transformers and colocate; in server
mode vLLM seeds each request from it, but the server's batching is outside this process). In server mode the
requests do not depend on the number of processes: the same global batch sends the same requests with the same seeds.

Metrics (``rollout/...``) are computed over every process's completions (summed across processes before averaging),
so the logged values describe the whole generation batch, not the main process's share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

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


def rollout_columns(completions: list[Completion], train_on_forced_tokens: bool,
                    budgets: list[BudgetConfig] | None = None) -> dict[str, list]:
    """The dict TRL expects from a rollout_func, built from engine completions (and the budget of each)."""
    columns = {
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
    if budgets is not None:
        columns["thinking_budget"] = [b.thinking_budget for b in budgets]
        columns["solution_budget"] = [b.solution_budget for b in budgets]
    return columns


def make_rollout_func(rollout: RolloutConfig, seed: int = 0) -> Callable:
    """A TRL ``rollout_func(prompts, trainer) -> dict`` running budget-constrained rollouts on every process."""
    state: dict = {}

    def rollout_func(prompts: list, trainer) -> dict:
        args = trainer.args
        step = trainer.state.global_step
        budgets = budgets_for(rollout, prompts, args.max_completion_length, seed=seed, step=step)
        # TRL hands each process its prompts already repeated num_generations times: one completion per entry.
        start = time.perf_counter()
        if rollout.engine == "vllm":
            completions = _vllm_rollouts(trainer, state, prompts, budgets, seed)
        else:
            sampling = _sampling(args, seed, step, process=trainer.accelerator.process_index)
            completions = _transformers_rollouts(trainer, state, rollout, prompts, budgets, sampling)
        elapsed = time.perf_counter() - start
        _log_rollout_metrics(trainer, completions, elapsed, budgets)
        return rollout_columns(completions, rollout.train_on_forced_tokens, budgets)

    return rollout_func


def _sampling(args, seed: int, step: int, process: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p if args.top_p is not None else 1.0,
        top_k=args.top_k or 0,
        seed=derive_seed(seed, step=step, process=process),
    )


def _transformers_rollouts(trainer, state: dict, rollout: RolloutConfig, prompts: list,
                           budgets: list[BudgetConfig], sampling: SamplingConfig) -> list[Completion]:
    """Each process decodes its own share on the policy, unwrapped as TRL's own transformers generation does
    (``grpo_trainer.py: _generate_single_turn``): ``unwrap_model_for_generation`` gathers ZeRO-3's sharded weights
    once for the whole rollout (and turns gradient checkpointing off meanwhile), and FSDP1's root parameters are
    summoned. Under ZeRO-3 or FSDP, transformers' ``generate`` keeps the processes' decoding steps in lockstep
    (``synced_gpus``), so a process whose rows finish early still takes part in the others' collectives: there the
    static loop runs; elsewhere the continuous decoder (``rollout.continuous``), which lets finished rows go."""
    from trl.models import unwrap_model_for_generation

    args = trainer.args
    dist = getattr(trainer, "_dist", None)  # TRL's DistributedBackend (ZeRO-3 / FSDP specifics)
    summon = (dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist is not None else nullcontext())
    with (
        unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                    gather_deepspeed3_params=args.ds3_gather_for_generation,
                                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model,
        summon,
    ):
        engine = state.get("engine")
        if engine is None or engine.model is not model:
            lockstep = dist is not None and (dist.is_zero3 or dist.is_fsdp)
            engine = TransformersEngine(model, trainer.processing_class, max_batch_size=rollout.max_batch_size,
                                        continuous=rollout.continuous and not lockstep)
            state["engine"] = engine
        was_training = model.training
        model.eval()
        try:
            return engine.generate(prompts, budgets, sampling, num_samples=1)
        finally:
            model.train(was_training)


def _vllm_rollouts(trainer, state: dict, prompts: list, budgets: list[BudgetConfig], seed: int) -> list[Completion]:
    """Budgeted rollouts in TRL's vLLM: the offline engine in colocate mode, the HTTP client in server mode."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None:
        raise RuntimeError("rollout.engine vllm needs TRL's vLLM (trainer.use_vllm); it is not set up")
    if generation.mode == "colocate":
        return _colocate_rollouts(trainer, state, generation, prompts, budgets, seed)
    return _server_rollouts(trainer, state, generation, prompts, budgets, seed)


def _colocate_rollouts(trainer, state: dict, generation, prompts: list, budgets: list[BudgetConfig],
                       seed: int) -> list[Completion]:
    """TRL's colocate generation (``vllm_generation.py: generate``, colocate branch), with our engine and budgets."""
    from ..generation.vllm_engine import VLLMEngine

    accelerator = trainer.accelerator
    tp = getattr(generation, "tensor_parallel_size", 1) or 1
    # All ranks of a tensor-parallel group run one SPMD generate: same prompts, same seeds (TRL seeds the group's LLM
    # with process_index // tensor_parallel_size). The seed's "process" is the group.
    sampling = _sampling(trainer.args, seed, trainer.state.global_step, process=accelerator.process_index // tp)
    all_prompts, all_budgets, share = list(prompts), list(budgets), slice(0, len(prompts))
    if tp > 1:
        # TRL: "Gather prompts from all ranks in the TP group and flatten" (all_gather_object over tp_group), then
        # "Slice completions for this rank within its TP group".
        gathered: list = [None] * tp
        torch.distributed.all_gather_object(gathered, (list(prompts), list(budgets)), group=generation.tp_group)
        all_prompts = [p for group_prompts, _ in gathered for p in group_prompts]
        all_budgets = [b for _, group_budgets in gathered for b in group_budgets]
        rank_in_group = torch.distributed.get_rank(group=generation.tp_group)
        start = sum(len(group_prompts) for group_prompts, _ in gathered[:rank_in_group])
        share = slice(start, start + len(prompts))

    engine = state.get("vllm_engine")
    if engine is None or engine.llm is not generation.llm:
        engine = VLLMEngine(generation.llm)
        state["vllm_engine"] = engine
    sleep_mode = bool(getattr(generation, "enable_sleep_mode", False))
    if sleep_mode:
        # TRL: "Sleep level 2 discards the weights, so waking up isn't enough: they must be re-pushed from the training
        # model" (sync_weights wakes the weights), then the KV cache is woken for generation.
        if getattr(generation, "_llm_weights_sleeping", False):
            generation.sync_weights()
        generation.llm.wake_up(tags=["kv_cache"])
    try:
        completions = engine.generate(all_prompts, all_budgets, sampling, num_samples=1)
    finally:
        if sleep_mode:  # TRL: back to sleep (level 2) after generation; the next rollout re-syncs the weights
            generation.llm.sleep(level=2)
            generation._llm_weights_sleeping = True
    return completions[share]


def _server_rollouts(trainer, state: dict, generation, prompts: list, budgets: list[BudgetConfig],
                     seed: int) -> list[Completion]:
    """TRL's server-mode generation (``vllm_generation.py: generate``, server branch): gather every process's prompts
    (``gather_object``), generate on the main process, which alone holds the client, then ``broadcast_object_list``
    the results and keep this process's slice. The main process generates the global batch in one call with
    ``process=0`` in its seeds and one ``slot`` per request group, so seeds stay unique across the gathered batch."""
    from accelerate.utils import broadcast_object_list, gather_object

    from ..generation.vllm_server_engine import VLLMServerEngine

    accelerator = trainer.accelerator
    step = trainer.state.global_step
    per_process = gather_object([(list(prompts), list(budgets))])  # one (prompts, budgets) per process, in rank order
    payload = None
    if accelerator.is_main_process:
        try:
            engine = state.get("vllm_server_engine")
            if engine is None or engine.client is not generation.vllm_client:
                engine = VLLMServerEngine(generation.vllm_client, trainer.processing_class,
                                          max_model_len=getattr(generation, "max_model_length", None))
                state["vllm_server_engine"] = engine
            all_prompts = [p for process_prompts, _ in per_process for p in process_prompts]
            all_budgets = [b for _, process_budgets in per_process for b in process_budgets]
            completions = engine.generate(all_prompts, all_budgets, _sampling(trainer.args, seed, step, process=0),
                                          num_samples=1, seed_step=step, seed_process=0)
            shares, start = [], 0
            for process_prompts, _ in per_process:
                shares.append(completions[start:start + len(process_prompts)])
                start += len(process_prompts)
            payload = ("ok", shares)
        except Exception as err:  # noqa: BLE001 - every process must hear of it, or the others wait forever
            payload = ("error", f"{type(err).__name__}: {err}")
    box = [payload]
    broadcast_object_list(box, from_process=0)
    status, value = box[0]
    if status == "error":
        raise RuntimeError(f"server-mode rollout failed on the main process: {value}")
    return value[accelerator.process_index]


def _log_rollout_metrics(trainer, completions: list[Completion], elapsed: float,
                         budgets: list[BudgetConfig] = ()) -> None:
    """Per-step rollout statistics over every process's completions, logged by TRL beside its own.

    TRL's ``log`` averages what each process appended, without talking to the others, and only the main process
    writes; so the sums are gathered across processes here (every process calls the rollout, so every process
    takes part), as TRL gathers its own completion statistics. ``rollout/seconds`` is the slowest process's."""
    metrics = getattr(trainer, "_metrics", None)
    if metrics is None:
        return
    used = [b.thinking_budget for b in budgets if b.thinking_budget is not None]
    local = torch.tensor([
        len(completions),
        sum(c.thinking_tokens for c in completions),
        sum(c.solution_tokens for c in completions),
        sum(c.thinking_truncated for c in completions),
        sum(c.forced_tokens for c in completions),
        sum(c.finish_reason == "stop" for c in completions),
        sum(c.total_tokens for c in completions),
        sum(used),
        len(used),
    ], dtype=torch.float64)
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        device = accelerator.device
        totals = accelerator.gather(local.to(device=device, dtype=torch.float32)[None]).double().sum(0).cpu()
        slowest = accelerator.gather(torch.tensor([elapsed], dtype=torch.float32, device=device)).max().item()
    else:
        totals, slowest = local, elapsed
    n, thinking, solution, cut, forced, eos, tokens, budget_sum, budget_count = totals.tolist()
    if n == 0:
        return
    mode = "train" if trainer.model.training else "eval"
    values = {
        "rollout/thinking_tokens": thinking / n,
        "rollout/solution_tokens": solution / n,
        "rollout/cut_fraction": cut / n,
        "rollout/forced_tokens": forced / n,
        "rollout/eos_fraction": eos / n,
        "rollout/tokens_generated": tokens,
        "rollout/seconds": slowest,
    }
    if budget_count:
        values["rollout/thinking_budget"] = budget_sum / budget_count
    for key, value in values.items():
        metrics[mode][key].append(value)
