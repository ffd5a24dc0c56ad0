"""`elastic-reasoning train ARGS...` with every process's rollouts written down, for the distributed tests.

Launched from the repository root as `accelerate launch --num_processes N -m tests.distributed_run --config RECIPE ...`
(or `python -m tests.distributed_run ...` for one process). Each process appends one JSON line per rollout to
`$ROLLOUT_DUMP_DIR/rank{r}.jsonl`: the step, the process, the prompts it was handed and what the rollout returned to
TRL (ids, env_mask, log-probs, counts, budgets), so a test can check every rank's completions, not only what the main
process logs.
"""

import json
import os
import sys
from pathlib import Path

DUMPED = ("prompt_ids", "completion_ids", "env_mask", "logprobs", "thinking_tokens", "solution_tokens",
          "thinking_truncated", "thinking_ended", "finish_reason", "thinking_budget", "solution_budget")


def _zero3_gather_counter() -> list[int]:
    """With ``COUNT_ZERO3_GATHERS=1``: counts DeepSpeed ``GatheredParameters`` contexts (what TRL's
    ``unwrap_model_for_generation`` opens to gather ZeRO-3's sharded weights), so a GPU test can check that a rollout
    gathers once, not at every decoding step. (Off otherwise: TRL imports deepspeed late, away from vLLM.)"""
    count = [0]
    if os.environ.get("COUNT_ZERO3_GATHERS") != "1":
        return count
    try:
        import deepspeed.zero
    except ImportError:
        return count
    original = deepspeed.zero.GatheredParameters

    class Counting(original):
        def __init__(self, *args, **kwargs):
            count[0] += 1
            super().__init__(*args, **kwargs)

    deepspeed.zero.GatheredParameters = Counting
    return count


def _dumping(make_rollout_func, folder: Path):
    gathers = _zero3_gather_counter()

    def make(rollout, seed=0):
        rollout_func = make_rollout_func(rollout, seed)

        def dumped(prompts, trainer):
            before = gathers[0]
            out = rollout_func(prompts, trainer)
            rank = trainer.accelerator.process_index
            generation = getattr(trainer, "vllm_generation", None)
            row = {"step": trainer.state.global_step, "process": rank,
                   "num_processes": trainer.accelerator.num_processes, "prompts": prompts,
                   "zero3_gathers": gathers[0] - before,
                   "vllm_sleeping": getattr(generation, "_llm_weights_sleeping", None),
                   **{key: out[key] for key in DUMPED}}
            with open(folder / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            return out

        return dumped

    return make


def main() -> int:
    from elastic_reasoning.training import rollout

    folder = Path(os.environ["ROLLOUT_DUMP_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    rollout.make_rollout_func = _dumping(rollout.make_rollout_func, folder)  # build_trainer imports it at call time
    from elastic_reasoning.cli import main as cli

    return cli(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
