"""Evaluation: shared thinking equals independent runs (exactly under greedy, in distribution under sampling), every
method runs, the store resumes after an interruption with nothing lost or duplicated, metrics, report, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.evaluation import EvalConfig, method_points, pass_at_k, run_eval, summarize
from elastic_reasoning.evaluation.report import write_report
from elastic_reasoning.evaluation.store import ResultStore, StoreError, row_key
from elastic_reasoning.evaluation.sweep import independent_sweep, shared_dimension, shared_sweep
from elastic_reasoning.generation.record import SamplingConfig
from elastic_reasoning.generation.transformers_engine import TransformersEngine

from .scripted import scripted_model

GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models gain nothing from a second thread, and on a busy machine two lose a lot (spin waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
FIELDS = ("completion_ids", "sampled_mask", "thinking_tokens", "solution_tokens", "forced_tokens", "thinking_truncated",
          "thinking_end", "finish_reason", "end_thinking_index", "solution_index", "thinking", "solution")


def fields(c):
    return tuple(getattr(c, f) for f in FIELDS)


def sweep_both(engine, prompts, points, sampling=GREEDY):
    shared = shared_sweep(engine, prompts, points, sampling)
    independent = independent_sweep(engine, [prompts] * len(points), points, [sampling] * len(points))
    return shared, independent


# ------------------------------------------------------------------------------------------- shared == independent


@pytest.fixture(scope="module")
def scripted_sweep_engine(toy_tokenizer):
    """Thinking ends by itself at different lengths per prompt: a number chain n -> n+1 from the prompt's last
    token; 12 -> end of thinking (</think>, or "check" then "ok" for the two-token delimiter); 40 -> EOS while
    thinking; the solution is 50 51 52 53 EOS."""
    tok = toy_tokenizer
    i = tok.convert_tokens_to_ids
    table = {i("12"): i("</think>"), i("</think>"): i("50"), i("53"): i("</s>"), i("40"): i("</s>"),
             i("check"): i("ok"), i("ok"): i("50")}
    single = TransformersEngine(scripted_model(tok, table), tok)
    table2 = dict(table)
    table2[i("12")] = i("check")
    double = TransformersEngine(scripted_model(tok, table2), tok)
    prompts = [[i("what"), i(str(k))] for k in range(0, 40, 3)]
    return {"</think>": single, "check ok": double}, prompts


@pytest.mark.parametrize("end, extra", [
    ("</think>", {}),
    ("check ok", {}),  # two-token delimiter: some budgets cut right after "check" (only "ok" is forced)
    ("</think>", {"eos_in_thinking": "stop"}),  # EOS while thinking ends the completion
    ("</think>", {"eos_in_thinking": "suppress"}),
    ("check ok", {"transition": "wait"}),
    ("</think>", {"answer_prefix": "answer"}),  # s1-style forced answer prefix
])
def test_shared_equals_independent_exactly_on_a_scripted_model(scripted_sweep_engine, end, extra):
    engines, prompts = scripted_sweep_engine
    engine = engines[end]
    base = BudgetConfig(end_thinking=end, **{k: v for k, v in extra.items() if k != "answer_prefix"})
    points = method_points("s1" if "answer_prefix" in extra else "elastic", [0, 1, 2, 3, 5, 8, 13, 30], 3, base=base,
                           answer_prefix=extra.get("answer_prefix", "Final Answer:"))
    shared, independent = sweep_both(engine, prompts, points)
    for k in range(len(points)):
        assert [fields(c) for c in shared.completions[k]] == [fields(c) for c in independent.completions[k]], k
    ends = {c.thinking_end for cs in independent.completions for c in cs}
    assert {"model", "budget"} <= ends  # both paths exercised
    if end == "check ok" and not extra:  # a cut right after "check": only "ok" forced
        assert any(c.thinking_truncated and c.forced_tokens == 1 for cs in independent.completions for c in cs)
    assert shared.tokens_generated < independent.tokens_generated


@pytest.mark.parametrize("method, end", [("elastic", "</think>"), ("elastic", "check ok"), ("truncate", "</think>")])
def test_shared_equals_independent_exactly_on_the_tiny_model(toy_engine, method, end):
    prompts = [toy_engine.render(f"what is the sum of {a} {b} ?", BudgetConfig()) for a in range(3) for b in (4, 7)]
    points = method_points(method, [0, 1, 4, 9, 24], 6, base=BudgetConfig(end_thinking=end))
    shared, independent = sweep_both(toy_engine, prompts, points)
    for k in range(len(points)):
        assert [fields(c) for c in shared.completions[k]] == [fields(c) for c in independent.completions[k]]
        for c in shared.completions[k]:
            assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
    # Decoded tokens are attributed so that they add up to what was decoded; sharing decodes fewer.
    assert shared.tokens_generated == sum(map(sum, shared.decoded))
    assert independent.tokens_generated == sum(c.total_tokens for cs in independent.completions for c in cs)
    assert shared.tokens_generated < 0.8 * independent.tokens_generated


class GeometricLM(LlamaForCausalLM):
    """Next-token probabilities by the last token only: thinking "1" goes on with p=0.7, ends with </think> (0.25)
    or EOS (0.05); the solution is "2" then EOS or "2" with p=0.5 each."""

    logp: torch.Tensor

    def forward(self, input_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, **kwargs)
        last = input_ids[:, -out.logits.shape[1]:]
        out.logits = self.logp[last].to(out.logits.dtype)
        return out


@pytest.fixture(scope="module")
def geometric_engine(toy_tokenizer):
    from elastic_reasoning.models.toy import build_toy_model

    tok = toy_tokenizer
    i = tok.convert_tokens_to_ids
    base = build_toy_model(tok)
    model = GeometricLM(base.config)
    model.load_state_dict(base.state_dict())
    model.generation_config = base.generation_config
    vocab = len(tok)
    probs = torch.full((vocab, vocab), 1e-12)
    probs[:, i("1")] = 1.0  # default: think
    for src in (i("<think>"), i("1")):
        probs[src] = 1e-12
        probs[src, i("1")], probs[src, i("</think>")], probs[src, i("</s>")] = 0.7, 0.25, 0.05
    probs[i("</think>")] = 1e-12
    probs[i("</think>"), i("2")] = 1.0
    probs[i("2")] = 1e-12
    probs[i("2"), i("2")], probs[i("2"), i("</s>")] = 0.5, 0.5
    model.logp = (probs / probs.sum(-1, keepdim=True)).log()
    return TransformersEngine(model.eval(), tok, max_batch_size=512)


def test_shared_matches_independent_in_distribution_under_sampling(geometric_engine):
    engine = geometric_engine
    n = 400
    prompts = [engine.render("what is 1 ?", BudgetConfig())] * n
    budgets, s = [1, 2, 4, 8], 4
    points = method_points("elastic", budgets, s)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=7)
    shared, independent = sweep_both(engine, prompts, points, sampling)

    def z(a, b, var_a, var_b):
        return abs(a - b) / math.sqrt(var_a / n + var_b / n + 1e-12)

    for k, b in enumerate(budgets):
        # Analytic: thinking is cut iff the first b sampled tokens all continue it (p = 0.7^b); the solution is
        # "2" then a fair coin for EOS at each step, capped at s.
        p_cut = 0.7 ** b
        think_mean = sum(min(i, b) * 0.7 ** i * 0.3 for i in range(200))
        sol_mean = sum(min(1 + g, s) * 0.5 ** g for g in range(1, 60))
        for out in (shared, independent):
            cs = out.completions[k]
            cut = sum(c.thinking_truncated for c in cs) / n
            assert z(cut, p_cut, p_cut * (1 - p_cut), 0) < 5, (b, cut, p_cut)
            thinking = [c.thinking_tokens for c in cs]
            mean = sum(thinking) / n
            var = sum((x - mean) ** 2 for x in thinking) / n
            assert z(mean, think_mean, var, 0) < 5, (b, mean, think_mean)
            sol = [c.solution_tokens for c in cs]
            sm = sum(sol) / n
            assert z(sm, sol_mean, sum((x - sm) ** 2 for x in sol) / n, 0) < 5, (b, sm, sol_mean)
        a = [c.thinking_tokens for c in shared.completions[k]]
        bb = [c.thinking_tokens for c in independent.completions[k]]
        ma, mb = sum(a) / n, sum(bb) / n
        va, vb = sum((x - ma) ** 2 for x in a) / n, sum((x - mb) ** 2 for x in bb) / n
        assert z(ma, mb, va, vb) < 5


def test_points_that_cannot_share_are_refused():
    with pytest.raises(ValueError, match="prompts differ"):
        shared_dimension(method_points("l1", [4, 8], 4))
    assert shared_dimension(method_points("elastic", [4, 8], 4)) == "thinking"
    assert shared_dimension(method_points("truncate", [4, 8], 4)) == "total"


# ------------------------------------------------------------------------------------------- runs, store, resume


def config(tmp_path, name="run", **kw) -> EvalConfig:
    base = dict(model="toy-under-test", dataset="synthetic", thinking_budgets=(2, 4, 8), solution_budget=4, samples=2,
                limit=4, seed=3, output=str(tmp_path / name), temperature=1.0, max_batch_size=4, progress=False)
    base.update(kw)
    return EvalConfig(**base)


SUMMARY_FIELDS = {"accuracy", "pass_at_k", "thinking_tokens", "solution_tokens", "total_tokens", "truncated_fraction",
                  "tokens_generated", "model", "method", "thinking_budget"}


@pytest.mark.parametrize("method", ["elastic", "truncate", "s1", "l1", "none"])
def test_every_method_runs_on_the_tiny_model(toy_engine, tmp_path, method):
    cfg = config(tmp_path, method=method, max_tokens=12, limit=2)
    result = run_eval(cfg, engine=toy_engine, log=None)
    points = 1 if method == "none" else 3
    assert result.computed == 2 * 2 * points
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary) == points and all(SUMMARY_FIELDS <= r.keys() for r in summary)
    rows = ResultStore.read(tmp_path / "run")
    if method == "s1":  # the forced answer prefix, as much of "Final Answer:" as the toy vocabulary can write
        assert all(r["solution"].startswith("answer :") for r in rows if r["thinking_truncated"])
    if method in ("truncate", "l1", "none"):
        caps = {"truncate": {2: 6, 4: 8, 8: 12}, "l1": {2: 12, 4: 16, 8: 24}, "none": {None: 12}}[method]
        assert all(r["total_tokens"] <= caps[r["budget"]] for r in rows)


class Interrupting:
    """The toy engine, interrupted (as by Ctrl-C) at its n-th decoding call."""

    def __init__(self, engine, at_call: int):
        self.engine, self.at_call, self.calls = engine, at_call, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def continue_ids(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.engine.continue_ids(*args, **kwargs)


def stored(directory) -> list[dict]:
    lines = (directory / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("independent", [False, True])
def test_resume_after_interruption_loses_and_duplicates_nothing(toy_engine, tmp_path, independent):
    cfg = config(tmp_path, limit=6, independent=independent)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, engine=Interrupting(toy_engine, at_call=4), log=None)
    partial = stored(tmp_path / "run")
    assert 0 < len(partial) < 6 * 2 * 3
    result = run_eval(cfg, engine=toy_engine, log=None)
    rows = stored(tmp_path / "run")
    assert result.computed == 6 * 2 * 3 - len(partial)
    keys = [row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 6 * 2 * 3
    assert rows[: len(partial)] == partial  # nothing rewritten
    # Same results as a run never interrupted (every unit is seeded by its position).
    clean = run_eval(config(tmp_path, "clean", limit=6, independent=independent), engine=toy_engine, log=None)
    assert sorted(map(json.dumps, stored(tmp_path / "clean"))) == sorted(map(json.dumps, rows))
    assert clean.records == result.records
    again = run_eval(cfg, engine=toy_engine, log=None)  # a third run computes nothing
    assert again.computed == 0 and len(stored(tmp_path / "run")) == len(rows)


def test_ctrl_c_on_the_command_line_leaves_a_store_that_resumes(toy_dir, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "elastic_reasoning", "eval", "--model", str(toy_dir), "--thinking-budgets", "4,8",
            "--solution-budget", "4", "--limit", "30", "--max-batch-size", "1", "--output", str(out), "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A shell that starts a job in the background without job control (``nohup cmd &`` in a script, some CI runners)
    # makes it ignore SIGINT, and children inherit that: Ctrl-C must reach this eval as it reaches one in a terminal.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and (not results.exists() or results.stat().st_size == 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err
    partial = stored(out)  # every line parses: nothing torn
    assert 0 < len(partial) < 60
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    keys = [row_key(r) for r in stored(out)]
    assert len(keys) == len(set(keys)) == 60


def test_a_torn_last_line_is_dropped_and_recomputed(toy_engine, tmp_path):
    cfg = config(tmp_path, limit=2)
    run_eval(cfg, engine=toy_engine, log=None)
    path = tmp_path / "run" / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut short by a hard kill
    result = run_eval(cfg, engine=toy_engine, log=None)
    assert result.computed == 1
    before = [json.loads(line) for line in lines]
    after = [json.loads(line) for line in path.read_text().splitlines()]
    # The same result again (seeded by its unit), every count as the uninterrupted run has it: the siblings the unit
    # re-decoded to repair it are not charged to the repaired row.
    assert after == before


def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.jsonl").write_text('{"model": 1}\nnot json\n{"x": 2}\n')
    with pytest.raises(StoreError, match="line 1"):
        ResultStore.read(d)


def test_other_settings_in_the_same_directory_are_refused(toy_engine, tmp_path):
    run_eval(config(tmp_path, limit=1), engine=toy_engine, log=None)
    with pytest.raises(StoreError, match="temperature: stored 1.0, now 0.6"):
        run_eval(config(tmp_path, limit=1, temperature=0.6), engine=toy_engine, log=None)
    # More budgets, samples or problems only add results.
    result = run_eval(config(tmp_path, limit=2, thinking_budgets=(2, 4, 8, 16)), engine=toy_engine, log=None)
    assert result.computed == 2 * 2 * 4 - 1 * 2 * 3


def test_shared_sweep_records_fewer_decoded_tokens_than_independent(toy_engine, tmp_path):
    shared = run_eval(config(tmp_path, "s", limit=3), engine=toy_engine, log=None)
    independent = run_eval(config(tmp_path, "i", limit=3, independent=True), engine=toy_engine, log=None)
    ts = sum(r["tokens_generated"] for r in shared.records)
    ti = sum(r["tokens_generated"] for r in independent.records)
    assert ts == shared.tokens_generated and ti == independent.tokens_generated
    assert ts < 0.8 * ti
    assert {r["mode"] for r in shared.records} == {"shared"}


# ------------------------------------------------------------------------------------------- metrics and report


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
    (4, 1, 1, 0.25),  # pass@1 = c/n
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 3, 2, 1.0),  # fewer wrong samples than k: always solved
    (16, 2, 4, 1 - (14 * 13 * 12 * 11) / (16 * 15 * 14 * 13)),
])
def test_pass_at_k_is_unbiased(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_summary_averages_pass_at_1_over_samples_then_problems():
    def row(pid, s, correct):
        return {"model": "m", "dataset": "d", "problem_id": pid, "sample": s, "method": "elastic", "budget": 8,
                "correct": correct, "thinking_tokens": 8, "solution_tokens": 2, "total_tokens": 11,
                "thinking_truncated": s == 0, "tokens_generated": 5}

    rows = [row("a", 0, True), row("a", 1, False), row("b", 0, False), row("b", 1, False)]
    (record,) = summarize(rows)
    assert record["accuracy"] == pytest.approx(25.0)
    assert record["pass_at_k"] == {"1": pytest.approx(25.0), "2": pytest.approx(50.0)}
    assert record["truncated_fraction"] == 0.5 and record["tokens_generated"] == 20


def test_report_draws_one_plot_for_several_runs(toy_engine, tmp_path):
    run_eval(config(tmp_path, "base", limit=2, model_name="base"), engine=toy_engine, log=None)
    run_eval(config(tmp_path, "e1", limit=2, model_name="e1", max_tokens=8), engine=toy_engine, log=None)
    run_eval(config(tmp_path, "e1", limit=2, model_name="e1", method="none", max_tokens=8), engine=toy_engine, log=None)
    md, png, table = write_report([tmp_path / "base", tmp_path / "e1"], tmp_path / "report")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = md.read_text()
    assert "| base | elastic | 8 |" in text and "| e1 | none | none |" in text and png.name in text


# ------------------------------------------------------------------------------------------- command line


def er(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "elastic_reasoning", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})


def test_unknown_dataset_is_a_one_line_error(toy_dir, tmp_path):
    r = er("eval", "--model", str(toy_dir), "--dataset", "aime2099", "--output", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown dataset 'aime2099'" in r.stderr and "aime2024" in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_row_is_a_one_line_error_naming_the_row(toy_dir, tmp_path):
    f = tmp_path / "aime.jsonl"
    f.write_text('{"id": 1, "problem": "1+1?", "answer": "2"}\n{"id": 2, "problem": "2+2?"}\n')
    r = er("eval", "--model", str(toy_dir), "--dataset", "aime2024", "--data-file", str(f), "--output",
           str(tmp_path / "x"))
    assert r.returncode == 2 and "row 1 (id 2): no answer" in r.stderr and "Traceback" not in r.stderr


def test_eval_and_report_on_the_command_line(toy_dir, tmp_path):
    out = tmp_path / "cli"
    r = er("eval", "--model", str(toy_dir), "--dataset", "champ", "--method", "elastic", "--thinking-budgets", "4,8",
           "--solution-budget", "4", "--samples", "2", "--limit", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "| accuracy % [95% CI] |" in r.stdout and "results computed" in r.stderr and (out / "summary.json").exists()
    r = er("report", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "accuracy_vs_tokens.png").exists() and "| toy | elastic | 4 |" in r.stdout


def test_eval_over_an_openai_compatible_endpoint(toy_engine, toy_dir, tmp_path):
    """--endpoint: the same sweep, phase by phase over the completions API of a server running the tiny model;
    under greedy decoding it gives the texts of local independent runs."""
    serving = pytest.importorskip("elastic_reasoning.serving")
    model = serving.ServedModel("toy", toy_engine)
    with serving.BackgroundServer(serving.create_app(model, serving.ServerConfig())) as server:
        remote = run_eval(config(tmp_path, "remote", model="toy", endpoint=server.url, tokenizer=str(toy_dir),
                                 temperature=0.0, limit=2), log=None)
    local = run_eval(config(tmp_path, "local", model="toy", temperature=0.0, limit=2, independent=True),
                     engine=toy_engine, log=None)
    assert remote.computed == local.computed == 2 * 2 * 3
    assert {r["mode"] for r in remote.records} == {"independent"}
    texts = lambda d: sorted((r["problem_id"], r["sample"], r["budget"], r["thinking"], r["solution"],  # noqa: E731
                              r["thinking_truncated"]) for r in stored(d))
    assert texts(tmp_path / "remote") == texts(tmp_path / "local")
