"""The demo pipeline end to end, quick variant: artefacts exist and are well formed (not the scientific claim)."""

import json
import os

import pytest


@pytest.mark.slow
def test_quick_demo_writes_a_well_formed_report(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_REASONING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from elastic_reasoning.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick_variant(out=str(tmp_path / "demo"))
    out = run_demo(cfg)
    records = json.loads((out / "summary.json").read_text())
    assert {(r["model"], r["thinking_budget"]) for r in records} == {
        (m, b) for m in ("warmup", "vanilla", "e1") for b in [*cfg.budgets, None]}
    for r in records:
        assert {"accuracy_mean", "accuracy_std", "thinking_tokens_mean", "solution_tokens_mean", "seeds",
                "seen_in_training", "accuracy_ci_low", "accuracy_ci_high", "accuracy", "total_tokens"} <= r.keys()
        assert 0 <= r["accuracy_mean"] <= 100 and r["seeds"] == cfg.seeds
        assert r["accuracy_ci_low"] <= r["accuracy_mean"] <= r["accuracy_ci_high"]
        if r["model"] == "e1":
            assert r["minus_vanilla_ci_low"] <= r["minus_vanilla"] <= r["minus_vanilla_ci_high"]
        if r["thinking_budget"] is not None:
            assert r["thinking_tokens_mean"] <= r["thinking_budget"]
    assert [r["thinking_budget"] for r in records if r["seen_in_training"]] == [cfg.thinking_budget]
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert "minimal-trace ceiling" in (out / "results.md").read_text()
    # one evaluation path: the demo's output is an eval directory for `report`, and each model has its own store
    from elastic_reasoning.evaluation.report import write_report

    _, _, table = write_report([out], tmp_path / "report")
    assert "| e1 | elastic |" in table and (out / "eval" / "e1-seed0" / "results.jsonl").exists()
    # a second run skips every stage and gives the same summary
    run_demo(cfg)
    assert json.loads((out / "summary.json").read_text()) == records
    assert os.path.exists(out / "models" / "e1-seed1" / "config.json")
    # the same directory with other settings is refused; a variant of E1 reuses the rest
    from elastic_reasoning.demo import apply_overrides

    with pytest.raises(ValueError, match="other settings"):
        run_demo(apply_overrides(DemoConfig.quick_variant(out=str(out)), ["grpo_steps=5"]))
    variant = apply_overrides(DemoConfig.quick_variant(out=str(tmp_path / "variant")), ["e1_budget_mix=[8,32]"])
    run_demo(variant, reuse=out)
    again = {(r["model"], r["thinking_budget"]): r for r in json.loads((tmp_path / "variant" / "summary.json").read_text())}
    for r in records:
        if r["model"] != "e1":  # copied, not retrained: the same results
            assert again[(r["model"], r["thinking_budget"])]["accuracy_mean"] == r["accuracy_mean"]
    metrics = (tmp_path / "variant" / "models" / "e1-seed0.run" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(m).get("rollout/thinking_budget") not in (None, 32) for m in metrics)


def test_minimal_trace_ceiling_counts_the_models_tokens():
    """On the tiny model a word is a token: the ceiling is the share of problems whose 4n - 3 words and </think> fit
    (the formula of the published runs); on another tokenizer the same function counts that tokenizer's tokens."""
    from elastic_reasoning.data.synthetic import generate_problems
    from elastic_reasoning.demo import DemoConfig, minimal_trace_ceiling, task_config
    from elastic_reasoning.models.toy import build_toy_tokenizer

    cfg = DemoConfig(heldout_problems=200)
    problems = generate_problems(200, "test", seed=0, config=task_config(cfg))
    words = [4 * len(p.terms) - 2 for p in problems]
    expected = {b: 100.0 * sum(k <= b for k in words) / len(words) for b in cfg.budgets}
    assert minimal_trace_ceiling(cfg, build_toy_tokenizer()) == expected

    class CharTokenizer:  # one token per character: a tokenizer unlike the toy's
        def encode(self, text, add_special_tokens=False):
            return list(text)

    chars = [len(p.minimal_thinking()) + len("</think>") for p in problems]
    got = minimal_trace_ceiling(cfg, CharTokenizer())
    assert got == {b: 100.0 * sum(k <= b for k in chars) / len(chars) for b in cfg.budgets}
    assert got[16] < expected[16] or expected[16] == 0.0
