"""The command line: the JSON contract of `generate`, its readable view, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def er(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elastic_reasoning", *args], capture_output=True, text=True, timeout=timeout)


REQUIRED = {"prompt_index", "sample_index", "thinking_tokens", "solution_tokens", "thinking_truncated", "finish_reason",
            "thinking", "solution", "completion_ids", "sampled_mask", "logprobs"}


def test_generate_json_contract(toy_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"What is 3+4?"\n{"prompt": "Add 12 and 30."}\n')
    r = er("generate", "--model", str(toy_dir), "--prompts-file", str(prompts), "-t", "5", "-s", "3",
           "--num-samples", "2", "--temperature", "1.0", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [(d["prompt_index"], d["sample_index"]) for d in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for d in rows:
        assert REQUIRED <= d.keys()
        assert d["thinking_tokens"] <= 5 and d["solution_tokens"] <= 3
        assert len(d["completion_ids"]) == len(d["sampled_mask"]) == len(d["logprobs"])


def test_generate_readable_view_separates_thinking_and_solution(toy_dir):
    r = er("generate", "--model", str(toy_dir), "--prompt", "What is 3+4?", "-t", "4", "-s", "2", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "--- thinking (4 tokens / budget 4; CUT by the thinking budget) ---" in r.stdout
    assert "--- solution (2 tokens / budget 2" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--thinking-budget", "-3"], "non-negative integer"),
        (["--thinking-budget", "2.5"], "non-negative integer"),
        (["--solution-budget", "ten"], "non-negative integer"),
        (["--num-samples", "0"], "positive integer"),
    ],
)
def test_bad_numbers_are_one_line_errors(toy_dir, args, message):
    r = er("generate", "--model", str(toy_dir), "--prompt", "hi", *args)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_empty_prompt_is_an_error(toy_dir):
    r = er("generate", "--model", str(toy_dir), "--prompt", "   ")
    assert r.returncode == 2 and "empty prompt" in r.stderr and "Traceback" not in r.stderr


def test_unknown_model_is_an_error(tmp_path):
    r = er("generate", "--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 2 and "unknown model" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_malformed_prompts_file_names_the_line(toy_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{not json\n')
    r = er("generate", "--model", str(toy_dir), "--prompts-file", str(bad))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "Traceback" not in r.stderr


def test_toy_model_command_builds_a_model_that_reloads_identically(tmp_path):
    r = er("toy-model", "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from elastic_reasoning.models.toy import build_toy_model, build_toy_tokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    fresh = build_toy_tokenizer()
    text = "<|user|> What is 3+4? <|assistant|> <think> 7 </think> 7 </s>"
    assert tok.encode(text) == fresh.encode(text) and tok.padding_side == "left"
    assert tok.chat_template == fresh.chat_template
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    reference = build_toy_model(fresh, seed=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert a.equal(b), name


def test_help_lists_the_commands():
    r = er("--help")
    assert r.returncode == 0
    for command in ("generate", "toy-model", "bench"):
        assert command in r.stdout


def test_reward_math_command_prints_score_and_extracted_answer():
    r = er("reward", "math", "--completion", "think </think> so \\boxed{\\frac{1}{2}}", "--answer", "0.5")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["score"] == 1.0 and d["extracted_answer"] == "\\frac{1}{2}"


def test_reward_code_command_runs_tests_in_the_sandbox(tmp_path):
    tests = tmp_path / "t.json"
    tests.write_text(json.dumps({"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}))
    completion = "x </think>\n```python\ndef add(a, b):\n    return a + b\n```"
    r = er("reward", "code", "--completion", completion, "--tests", str(tests), "--timeout", "5")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["score"], d["passed"], d["total"]) == (1.0, 1, 1) and d["sandbox"] in ("bwrap", "unshare", "plain")


@pytest.mark.parametrize("content, message", [("{bad", "not JSON"), ("{}", "unrecognised tests")])
def test_reward_code_command_rejects_malformed_tests(tmp_path, content, message):
    tests = tmp_path / "t.json"
    tests.write_text(content)
    r = er("reward", "code", "--completion", "x", "--tests", str(tests))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_sampler_prints_both_timings_as_json():
    out = er("bench", "sampler", "--rows", "8", "--vocab", "50", "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 8 and result["vocab"] == 50
    assert result["multinomial_ms"] > 0 and result["inverse_cdf_ms"] > 0
    assert result["speedup"] == result["multinomial_ms"] / result["inverse_cdf_ms"]


@pytest.mark.parametrize("mode", [[], ["--vanilla", "--max-tokens", "12"]])
def test_bench_rollouts_times_both_decoders_and_scores_them(toy_dir, mode):
    out = er("bench", "rollouts", "--model", str(toy_dir), "--prompts", "2", "--samples", "2", "--repeats", "1",
             "--thinking-budget", "6", "--solution-budget", "4", "--json", *mode)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rollouts"] == 4 and set(result["decoders"]) == {"static", "continuous"}
    for row in result["decoders"].values():
        assert row["median_s"] > 0 and row["tokens"] > 0 and len(row["accuracy_per_repeat"]) == 1
    assert result["static_over_continuous_seconds"] == pytest.approx(
        result["decoders"]["static"]["median_s"] / result["decoders"]["continuous"]["median_s"])
    assert (result["thinking_budget"] is None) == bool(mode)
