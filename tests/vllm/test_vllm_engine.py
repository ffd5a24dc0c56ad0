"""vLLM's CPU build running the tiny model: budgets hold inside continuous batching, and the records match the
transformers engine's (same weights, float32)."""

import json
import math
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
    check_logprobs(c)


def check_logprobs(c):
    """record.py's one definition: a sampled token's log-prob under its distribution, NaN for a forced one."""
    assert c.logprobs_kind == "sampling"
    for lp, m in zip(c.logprobs, c.sampled_mask):
        assert math.isnan(lp) if m == 0 else lp <= 1e-6


def same_logprobs(a, b, tol=1e-4) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) < tol for x, y in zip(a, b))


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
        # greedy: the plain log-softmax of each sampled token in both, NaN for each forced one
        assert same_logprobs(a.logprobs, b.logprobs)


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


@pytest.fixture(scope="session")  # never dropped before the end: an in-process LLM's teardown ends vLLM's
def hostile_vllm(toy_dir, tmp_path_factory):  # distributed state for every other LLM of the process
    """The vLLM engine on a copy of the toy checkpoint whose generation_config.json asks for every sampling change
    it can."""
    import shutil

    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    out = tmp_path_factory.mktemp("hostile") / "toy"
    shutil.copytree(toy_dir, out)
    config = json.loads((out / "generation_config.json").read_text())
    config.update(repetition_penalty=3.0, no_repeat_ngram_size=2, min_new_tokens=7, temperature=0.2, top_k=3,
                  do_sample=True)
    (out / "generation_config.json").write_text(json.dumps(config))
    return VLLMEngine.from_pretrained(str(out), dtype="float32", max_model_len=512)


def test_checkpoint_sampling_defaults_never_apply(vllm_engine, hostile_vllm):
    """The hostile generation_config.json changes no token and no log-prob, greedy or sampled: the LLM runs with
    generation_config="vllm" (vLLM's neutral defaults) and every request states its own sampling."""
    model_config = hostile_vllm.llm.llm_engine.model_config
    assert model_config.generation_config == "vllm" and model_config.get_diff_sampling_param() == {}
    for sampling in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.8, top_p=0.9, seed=7)):
        ours = hostile_vllm.generate(PROMPTS, MIXED, sampling, num_samples=2)
        clean = vllm_engine.generate(PROMPTS, MIXED, sampling, num_samples=2)
        assert [c.completion_ids for c in ours] == [c.completion_ids for c in clean]
        assert [c.sampled_mask for c in ours] == [c.sampled_mask for c in clean]
        assert all(same_logprobs(a.logprobs, b.logprobs, 1e-6) for a, b in zip(ours, clean))


def test_raw_logprobs_modes_are_refused(vllm_engine, toy_dir):
    from types import SimpleNamespace

    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="processed_logprobs"):
        VLLMEngine.from_pretrained(str(toy_dir), logprobs_mode="raw_logprobs")
    # an LLM made elsewhere (TRL's colocate mode makes it with processed_logprobs): checked, refused if raw
    engine_view = SimpleNamespace(model_config=SimpleNamespace(logprobs_mode="raw_logprobs", model=str(toy_dir),
                                                               max_model_len=512))
    raw = SimpleNamespace(llm_engine=engine_view, get_tokenizer=lambda: vllm_engine.tokenizer)
    with pytest.raises(ValueError, match="logprobs_mode='raw_logprobs'"):
        VLLMEngine(raw)
    assert VLLMEngine(vllm_engine.llm).logprobs_kind == "sampling"


def test_per_request_seeds_never_collide():
    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    stream = VLLMEngine.make_generator(SamplingConfig(temperature=1.0, seed=3))
    seeds = stream.take(5000) + stream.take(5000)  # two calls sharing the stream (two-call mode, sweeps)
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    again = VLLMEngine.make_generator(SamplingConfig(temperature=1.0, seed=3))
    assert again.take(5000) == seeds[:5000]  # reproducible
    assert VLLMEngine.make_generator(SamplingConfig(temperature=1.0)) is None  # vLLM's own randomness
    assert VLLMEngine.make_generator(SamplingConfig(temperature=0.0, seed=3)) is None


def test_replay_reads_an_eos_path_as_forced_only_where_it_must(toy_engine):
    """Replay of a multi-token end of thinking [60, 61]: read as the model's own unless the tokens rule it out."""
    from elastic_reasoning.budget import BudgetRow, BudgetTokens
    from elastic_reasoning.generation.vllm_engine import replay

    tokens = BudgetTokens(end_thinking_ids=(60, 61), transition_ids=(70,), eos_ids=frozenset({2}), pad_id=0)
    free = BudgetConfig(thinking_budget=10, solution_budget=2)
    part = replay(BudgetRow(free, tokens), [30, 60, 61, 40, 2], [-1.0, -0.5, 0.0, -2.0, -0.1])
    assert part.mask == [1, 1, 1, 1, 1] and part.row.thinking_end.value == "model" and part.row.solution_index == 3
    # t = 2: read as the model's, 60 would spend the budget and force the transition 70; the output has 61, so the
    # processor took the EOS path: 60 and 61 are forced
    cut = BudgetConfig(thinking_budget=2, solution_budget=2, transition="x")
    part = replay(BudgetRow(cut, tokens), [30, 60, 61, 40, 2], [-1.0, -0.5, 0.0, -2.0, -0.1])
    assert part.ids == [30, 60, 61, 40, 2] and part.mask == [1, 0, 0, 1, 1]
    assert part.row.thinking_end.value == "eos" and not part.row.thinking_truncated
    assert math.isnan(part.logprobs[1]) and math.isnan(part.logprobs[2]) and part.logprobs[3] == -2.0
    part = replay(BudgetRow(cut, tokens), [30, 31, 70, 60, 61, 40], [-1.0] * 6)  # a real cut: transition forced
    assert part.mask == [1, 1, 0, 0, 0, 1] and part.row.thinking_truncated
    with pytest.raises(RuntimeError, match="processor loaded"):  # a token no reading explains
        replay(BudgetRow(cut, tokens), [30, 31, 40], [-1.0] * 3)


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
