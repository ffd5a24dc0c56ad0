"""Shared by the distributed tests (tests/test_distributed.py, tests/vllm/test_distributed*.py): launching a few GRPO
steps of recipes/toy.yaml on N processes through `accelerate launch` (gloo on this CPU), reading back what every
process's rollouts returned (tests/distributed_run.py writes it), and the promises each rank's completions keep."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "tests.distributed_run"  # run as a module from the root: as a script, tests/ would lead sys.path, and tests/vllm
# would then pass for vLLM itself
TOY_RECIPE = ROOT / "recipes" / "toy.yaml"
END_THINKING_ID = 5  # the toy tokenizer's "</think>" (one token)

# A few small steps of the toy recipe: 4 prompts x 4 rollouts per step whatever the number of processes; each prompt
# group draws its thinking budget from a mix, so "the same budgets" is a real check.
THINKING_MIX, SOLUTION = (4, 8), 6
COMMON = ["--max_steps", "2", "--num_generations", "4", "--thinking_budget", "8", "--solution_budget", str(SOLUTION),
          "--thinking_budget_mix", json.dumps(list(THINKING_MIX)), "--max_completion_length", "32",
          "--save_strategy", "no", "--data.synthetic", "{num_problems: 64, min_terms: 4, max_terms: 8}",
          "--disable_tqdm", "true", "--logging_steps", "1", "--seed", "0"]
GLOBAL_BATCH = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


def launch(out: Path, toy_dir: Path, processes: int, *extra: str, env: dict | None = None, timeout: int = 900,
           accelerate_config: str | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes N` of tests/distributed_run.py on recipes/toy.yaml with the same global batch
    whatever N (gloo on this CPU through recipes/accelerate/cpu-2proc.yaml unless another config is named), or a plain
    process when N == 1 and no config is named; rollouts dumped under out/rollouts, the run in out/run."""
    args = ["--config", str(TOY_RECIPE), "--model.name_or_path", str(toy_dir), *COMMON,
            "--per_device_train_batch_size", str(GLOBAL_BATCH // processes), "--output_dir", str(out / "run"), *extra]
    if processes == 1 and accelerate_config is None:
        cmd = [sys.executable, "-m", RUN, *args]
    else:
        config = accelerate_config or "recipes/accelerate/cpu-2proc.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
               "--num_processes", str(processes), "--main_process_port", str(free_port()), "-m", RUN, *args]
    env = dict(env or child_env(), ROLLOUT_DUMP_DIR=str(out / "rollouts"))
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rollouts(out: Path) -> dict[tuple[int, int], dict]:
    """(step, process) -> what that process's rollout returned at that step."""
    rows = {}
    for path in sorted((out / "rollouts").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[(row["step"], row["process"])] = row
    return rows


def metrics(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "run" / "metrics.jsonl").read_text().splitlines())}


def check_every_completion(row: dict, *, engine: str) -> None:
    """Every completion of one process's rollout keeps its budgets, and every forced token is masked out of the
    loss (env_mask 0) with a NaN log-prob, while every sampled token has a real one."""
    n = len(row["completion_ids"])
    assert n == len(row["prompts"]) and n > 0
    for i in range(n):
        ids, mask, logprobs = row["completion_ids"][i], row["env_mask"][i], row["logprobs"][i]
        t, s = row["thinking_budget"][i], row["solution_budget"][i]
        assert t in THINKING_MIX and s == SOLUTION
        assert len(ids) == len(mask) == len(logprobs)
        assert row["thinking_tokens"][i] <= t and row["solution_tokens"][i] <= s, (engine, i)
        assert len(ids) <= t + 1 + s  # thinking, the one-token end of thinking, the solution
        for m, lp in zip(mask, logprobs):
            assert (math.isnan(lp) if m == 0 else (math.isfinite(lp) and lp <= 1e-6)), (engine, i, mask, logprobs)
        if row["thinking_truncated"][i]:  # a cut: the end of thinking forced right after t thinking tokens
            assert ids[t] == END_THINKING_ID and mask[t] == 0, (engine, i, ids, mask)


def check_run(out: Path, processes: int, *, engine: str, steps: int = 2) -> dict[tuple[int, int], dict]:
    """Every process rolled out at every step, each completion kept its promises, and the logged rollout metrics
    are those of all processes' completions together (not the main process's share)."""
    rows = rollouts(out)
    assert sorted(rows) == [(k, r) for k in range(steps) for r in range(processes)], sorted(rows)
    for row in rows.values():
        assert row["num_processes"] == processes
        check_every_completion(row, engine=engine)
    logged = metrics(out)
    assert sorted(logged) == list(range(1, steps + 1))
    for k in range(steps):
        shares = [rows[(k, r)] for r in range(processes)]
        thinking = [x for row in shares for x in row["thinking_tokens"]]
        tokens = sum(len(ids) for row in shares for ids in row["completion_ids"])
        cut = [x for row in shares for x in row["thinking_truncated"]]
        assert len(thinking) == GLOBAL_BATCH
        logged_k = logged[k + 1]
        assert logged_k["rollout/thinking_tokens"] == _approx(sum(thinking) / len(thinking))
        assert logged_k["rollout/tokens_generated"] == _approx(tokens)
        assert logged_k["rollout/cut_fraction"] == _approx(sum(cut) / len(cut))
    return rows


def check_same_first_step(many: dict, one: dict, processes: int) -> None:
    """The N-process run's first step saw the prompts and budgets of the 1-process run with the same global batch,
    split across the processes in rank order."""
    split = [many[(0, r)] for r in range(processes)]
    for key in ("prompts", "prompt_ids", "thinking_budget", "solution_budget"):
        assert [x for row in split for x in row[key]] == one[(0, 0)][key], key


def _approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-5, abs=1e-5)
