"""The warm-up checkpoint this package ships (``models/demo_warmup``) is the one the demo's stage 2 would train:
same settings, same starting model, same training examples; and it has learnt the task."""

import json

import pytest

from elastic_reasoning.demo import (SHIPPED_WARMUP, WARMUP_SETTINGS, DemoConfig, build_base, file_md5,
                                    prepare_warmup, shipped_warmup_differences, training_examples_digest)

PROVENANCE = json.loads((SHIPPED_WARMUP / "provenance.json").read_text())


def test_the_default_demo_uses_the_shipped_warmup_and_its_bits_are_the_recorded_ones():
    cfg = DemoConfig()
    assert shipped_warmup_differences(cfg) == []
    assert set(PROVENANCE["settings"]) == set(WARMUP_SETTINGS)
    assert file_md5(SHIPPED_WARMUP / "model.safetensors") == PROVENANCE["md5"]


def test_its_inputs_are_what_this_code_builds(tmp_path):
    """A change of the tiny model's definition or of the task's data generation would make the shipped warm-up
    stale: these fail then (retrain it: provenance.json's ``rebuild``)."""
    cfg = DemoConfig()
    assert training_examples_digest(cfg) == PROVENANCE["training_examples_sha256"]
    build_base(cfg, tmp_path / "base")
    assert file_md5(tmp_path / "base" / "model.safetensors") == PROVENANCE["base_md5"]


def test_prepare_warmup_copies_it_refuses_other_settings_and_bad_sources(tmp_path):
    cfg = DemoConfig(out=str(tmp_path))
    said = prepare_warmup(cfg, tmp_path / "base", tmp_path / "warmup", make_bar=lambda: pytest.fail("trained"))
    assert "shipped" in said and PROVENANCE["md5"][:8] in said
    assert file_md5(tmp_path / "warmup" / "model.safetensors") == PROVENANCE["md5"]
    assert not (tmp_path / "warmup.copy").exists()
    with pytest.raises(ValueError, match="warmup_steps: 1500 there, 10 here"):
        prepare_warmup(DemoConfig(warmup_steps=10, warmup_source="shipped"), tmp_path / "b", tmp_path / "w2")
    with pytest.raises(ValueError, match="auto, shipped, train"):
        prepare_warmup(DemoConfig(warmup_source="hub"), tmp_path / "b", tmp_path / "w3")
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()


def test_the_shipped_warmup_solves_the_task_with_no_budget(tmp_path):
    """Through the demo's own evaluation path: 40 held-out problems, no budget and t* = 32. The published run
    measured 92.7 % with no budget on 500 problems (3 seeds); 40 problems at one seed still land well above 75 %."""
    from elastic_reasoning.demo import evaluate, summarize

    cfg = DemoConfig(out=str(tmp_path), heldout_problems=40, budgets=[32], seeds=1)
    prepare_warmup(cfg, tmp_path / "models" / "base", tmp_path / "models" / "warmup")
    store = evaluate(cfg, tmp_path / "models" / "warmup", "warmup@0", 0, tmp_path)
    rows = {r["thinking_budget"]: r for r in summarize(cfg, {"warmup": [store]})}
    assert rows[None]["accuracy_mean"] >= 75.0
    assert rows[None]["thinking_tokens_mean"] > 40  # the warm-up thinks in padded, worked traces
    assert rows[32]["accuracy_mean"] < rows[None]["accuracy_mean"]  # and a cut at t* = 32 costs it


def test_run_demo_refuses_an_unknown_warmup_source_before_writing_anything(tmp_path):
    from elastic_reasoning.demo import run_demo

    with pytest.raises(ValueError, match="warmup_source"):
        run_demo(DemoConfig(out=str(tmp_path / "run"), warmup_source="hub"))
    assert not (tmp_path / "run").exists()
