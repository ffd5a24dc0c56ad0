"""vLLM's CPU build running the tiny model: budgets hold inside continuous batching, and the records match the
transformers engine's (same weights, float32)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.record import SamplingConfig

PROMPTS = ["what is 3 + 4 ?", "what is the sum of 1 2 3 ?", "hello", "what is 9 + 9 ?"]
MIXED = [BudgetConfig(thinking_budget=0, solution_budget=5), BudgetConfig(thinking_budget=3, solution_budget=4),
         BudgetConfig(thinking_budget=16, solution_budget=6), BudgetConfig(max_total_tokens=24)]
ER = Path(sys.executable).with_name("elastic-reasoning")


def check_budgets(c, budget: BudgetConfig):
    assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
    if budget.thinking_budget is not None:
        assert c.thinking_tokens <= budget.thinking_budget
    if budget.solution_budget is not None:
        assert c.solution_tokens <= budget.solution_budget
    if budget.max_total_tokens is not None:
        assert len(c.completion_ids) <= budget.max_total_tokens
    forced = [i for i, m in enumerate(c.sampled_mask) if m == 0]
    if c.thinking_truncated:
        assert forced == [c.end_thinking_index]  # exactly the one-token </think>, where thinking was cut
        assert c.thinking_tokens == budget.thinking_budget
    else:
        assert forced == []
    assert c.finish_reason in ("stop", "length")
    if c.finish_reason == "stop":
        assert c.completion_ids[-1] == 2  # EOS sampled by the model, never the forced stop token
    assert all(lp <= 1e-6 for lp in c.logprobs)


def test_greedy_equals_transformers_engine(vllm_engine, toy_engine):
    greedy = SamplingConfig(temperature=0.0)
    ours = vllm_engine.generate(PROMPTS, MIXED, greedy)
    ref = toy_engine.generate(PROMPTS, MIXED, greedy)
    for a, b, budget in zip(ours, ref, MIXED):
        check_budgets(a, budget)
        assert a.completion_ids == b.completion_ids
        assert a.sampled_mask == b.sampled_mask
        assert (a.thinking_tokens, a.solution_tokens, a.forced_tokens, a.finish_reason, a.thinking_end) == (
            b.thinking_tokens, b.solution_tokens, b.forced_tokens, b.finish_reason, b.thinking_end)
        # raw log-probs: the model's own, forced tokens included (greedy reports the plain log-prob in both)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_two_call_equals_one_pass_under_greedy(vllm_engine):
    greedy = SamplingConfig(temperature=0.0)
    one = vllm_engine.generate(PROMPTS, MIXED, greedy)
    two = vllm_engine.generate(PROMPTS, MIXED, greedy, mode="two-call")
    assert [c.completion_ids for c in one] == [c.completion_ids for c in two]
    assert [c.sampled_mask for c in one] == [c.sampled_mask for c in two]


def test_budgets_hold_on_every_request_of_a_mixed_sampled_batch(vllm_engine):
    budgets = [BudgetConfig(thinking_budget=t, solution_budget=s) for t, s in [(0, 3), (2, 6), (5, 1), (9, 9), (30, 2)]]
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(len(budgets))]
    out = vllm_engine.generate(prompts, budgets, SamplingConfig(temperature=1.0, top_p=1.0, seed=1), num_samples=12)
    assert len(out) == 60
    for c in out:
        check_budgets(c, budgets[c.prompt_index])
    truncated = sum(c.thinking_truncated for c in out)
    assert truncated >= 36  # t = 0, 2, 5 always cut this random model; the toy rarely closes its thinking early


def test_seeded_calls_are_reproducible(vllm_engine):
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=5)
    a = vllm_engine.generate(PROMPTS, MIXED, sampling, num_samples=2)
    b = vllm_engine.generate(PROMPTS, MIXED, sampling, num_samples=2)
    assert [c.completion_ids for c in a] == [c.completion_ids for c in b]


def test_requests_without_budgets_share_the_batch_untouched(vllm_engine, toy_engine):
    """Plain requests beside budgeted ones decode exactly as transformers' plain greedy decoding."""
    import torch
    from vllm import SamplingParams

    from elastic_reasoning.generation.vllm_args import budget_extra_args

    ids = vllm_engine.render(PROMPTS[0], BudgetConfig())
    budget = BudgetConfig(thinking_budget=2, solution_budget=3)
    plain = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=False)
    budgeted = SamplingParams(temperature=0.0, max_tokens=20, extra_args=budget_extra_args(budget))
    outs = vllm_engine.llm.generate([{"prompt_token_ids": ids}] * 4, [plain, budgeted, plain, budgeted],
                                    use_tqdm=False)
    with torch.inference_mode():
        ref = toy_engine.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=20,
                                        eos_token_id=2, pad_token_id=0)[0, len(ids):].tolist()
    if 2 in ref:
        ref = ref[: ref.index(2) + 1]
    assert list(outs[0].outputs[0].token_ids) == ref == list(outs[2].outputs[0].token_ids)
    assert list(outs[1].outputs[0].token_ids)[2] == 5  # </think> forced at t = 2 in the same batch


def test_bad_budget_arguments_fail_the_request(vllm_engine):
    from vllm import SamplingParams

    with pytest.raises(Exception, match="thinking_budget must be >= 0"):  # vLLM's VLLMValidationError
        vllm_engine.llm.generate(["hello"], SamplingParams(max_tokens=4, extra_args={"thinking_budget": -3}),
                                 use_tqdm=False)


def _cli(*args, timeout=300):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    return subprocess.run([str(ER), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_generate_json(toy_dir):
    r = _cli("generate", "--backend", "vllm", "--model", str(toy_dir), "--prompt", "what is 3 + 4 ?",
             "--thinking-budget", "4", "--solution-budget", "6", "--num-samples", "3", "--temperature", "1.0",
             "--seed", "0", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(rows) == 3
    for row in rows:
        assert row["thinking_tokens"] <= 4 and row["solution_tokens"] <= 6
        assert len(row["completion_ids"]) == len(row["sampled_mask"]) == len(row["logprobs"])


def test_cli_eval_with_vllm_backend(toy_dir, tmp_path):
    out = tmp_path / "eval"
    r = _cli("eval", "--backend", "vllm", "--model", str(toy_dir), "--dataset", "synthetic", "--limit", "6",
             "--samples", "2", "--thinking-budgets", "2,6,12", "--solution-budget", "5", "--output", str(out),
             "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(rec["thinking_budget"] for rec in summary) == [2, 6, 12]
    for rec in summary:
        assert rec["completions"] == 12
        assert rec["thinking_tokens"] <= rec["thinking_budget"] and rec["solution_tokens"] <= 5


def test_cli_bench_vllm_quick():
    r = _cli("bench", "vllm", "--quick", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    row = result["rows"][0]
    assert row["tokens"]["one-pass"] == row["tokens"]["two-call"] == row["tokens"]["plain"] > 0
    assert row["overhead_vs_plain"] > 0 and row["two_call_over_one_pass"] > 0
