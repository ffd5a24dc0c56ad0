"""``elastic-reasoning train``: GRPO on TRL with budget-constrained rollouts.

This module wires a :class:`~.config.TrainConfig` into TRL's ``GRPOTrainer``: the dataset (prompt + ground-truth
columns), the rewards by name or dotted path, the rollout function of :mod:`.rollout`, a metrics JSONL writer, and
checkpoint/resume. It adds no training loop of its own: multi-GPU and multi-node runs go through ``accelerate
launch`` exactly as for TRL (configs in ``recipes/accelerate/``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from .config import ConfigError, TrainConfig


def synthetic_rows(num_problems: int = 2000, seed: int = 0, **options) -> list[dict]:
    """Training problems of the embedded synthetic task (never the held-out ones) as dataset rows."""
    from ..data.synthetic import SyntheticConfig, generate_problems

    problems = generate_problems(num_problems, "train", seed=seed, config=SyntheticConfig(**options))
    return [{"problem": p.prompt, "answer": str(p.answer), "id": p.id} for p in problems]


def load_train_dataset(cfg: TrainConfig):
    """A ``datasets.Dataset`` with a conversational ``prompt`` column, ``answer``, and the source's other columns."""
    from datasets import Dataset, load_dataset

    data = cfg.data
    source = data.dataset
    if source == "synthetic":
        ds = Dataset.from_list(synthetic_rows(**data.synthetic))
    elif Path(source).suffix in (".jsonl", ".json", ".parquet") or Path(source).exists():
        kind = "parquet" if source.endswith(".parquet") else "json"
        if not Path(source).exists():
            raise FileNotFoundError(f"dataset file not found: {source}")
        ds = load_dataset(kind, data_files=source, split="train")
    else:
        ds = load_dataset(source, data.subset, split=data.split)  # a hub id: needs network or a warm cache
    if data.limit is not None:
        ds = ds.select(range(min(data.limit, len(ds))))
    if data.prompt_column not in ds.column_names:
        raise ValueError(f"dataset {source!r} has no column {data.prompt_column!r} (columns: {ds.column_names})")

    def to_prompt(row):
        question = row[data.prompt_column]
        if isinstance(question, list):  # already chat messages
            prompt = question
        else:
            prompt = [{"role": "user", "content": data.prompt_template.format(question=question)}]
        out = {"prompt": prompt}
        if data.answer_column != "answer" and data.answer_column in row:
            out["answer"] = row[data.answer_column]
        return out

    return ds.map(to_prompt)


def build_rewards(cfg: TrainConfig):
    from ..rewards import get_reward

    funcs = []
    for spec in cfg.rewards:
        kwargs = dict(spec.kwargs)
        if spec.name in ("math", "code", "format"):
            kwargs.setdefault("end_of_thinking", cfg.rollout.end_thinking)
        fn = get_reward(spec.name, **kwargs)
        if not getattr(fn, "__name__", None):
            fn.__name__ = spec.name
        funcs.append(fn)
    return funcs, [spec.weight for spec in cfg.rewards]


class MetricsCallback(TrainerCallback):
    """Appends every log (one per step with logging_steps=1) to ``metrics.jsonl`` in the output directory."""

    def __init__(self, path: Path, primary_reward: str | None):
        self.path = path
        self.primary_reward = primary_reward
        self._last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero or ("loss" not in logs and "reward" not in logs):
            return
        now = time.perf_counter()
        row = {"step": state.global_step, **logs, "step_time": now - self._last}
        self._last = now
        if self.primary_reward and f"rewards/{self.primary_reward}/mean" in logs:
            row.setdefault("accuracy", logs[f"rewards/{self.primary_reward}/mean"])
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def build_trainer(cfg: TrainConfig):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from ..models import load_model_and_tokenizer
    from .rollout import make_rollout_func

    trainer_args = dict(cfg.trainer)
    trainer_args.setdefault("output_dir", "runs/train")
    trainer_args.setdefault("logging_steps", 1)
    trainer_args.setdefault("report_to", "none")
    trainer_args.setdefault("save_strategy", "steps")
    if not torch.cuda.is_available():
        trainer_args.setdefault("use_cpu", True)
        trainer_args.setdefault("bf16", False)
    if cfg.rollout.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("rollout.engine vllm needs vLLM: `pip install elastic-reasoning[vllm]` on a GPU "
                               "machine, or `make vllm-env` and .venv-vllm/bin/elastic-reasoning on a CPU machine")
        trainer_args["use_vllm"] = True
        trainer_args.setdefault("vllm_mode", "colocate")
    funcs, weights = build_rewards(cfg)
    trainer_args.setdefault("reward_weights", weights)
    args = GRPOConfig(**trainer_args)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.trainer = trainer_args
    cfg.save(out / "resolved_config.yaml")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, dtype=cfg.model.dtype, device=device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = load_train_dataset(cfg)

    rollout_func = make_rollout_func(cfg.rollout, seed=args.seed)

    callback = MetricsCallback(out / "metrics.jsonl", getattr(funcs[0], "__name__", None) if funcs else None)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout_func,
        callbacks=[callback],
    )
    if cfg.rollout.engine == "vllm" and args.vllm_mode == "colocate" and not torch.cuda.is_available():
        use_inplace_reload(trainer.vllm_generation)
    return trainer


def use_inplace_reload(generation) -> None:
    """Weight sync for TRL's colocate mode on vLLM's CPU build.

    The CPU build repacks linear weights after loading (their parameters are left empty), so TRL's per-parameter
    ``load_weights`` cannot update them. vLLM's in-place reload (``model_runner.reload_weights``) runs the loading and
    the repacking again from the trainer's parameters (checkpoint names, as TRL yields them)."""
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner

    def sync_weights() -> None:
        runner.reload_weights(weights_iterator=((name, param.detach()) for name, param in
                                                generation._iter_named_params()))
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def train(cfg: TrainConfig, *, bar=None) -> Path:
    """Train; returns the output directory (its ``final/`` holds the model). ``bar``: a tqdm bar advanced once per
    step instead of the Trainer's console log lines (``training/progress.py``)."""
    trainer = build_trainer(cfg)
    if bar is not None:
        from .progress import quiet

        quiet(trainer, bar)
    out = Path(trainer.args.output_dir)
    resume_from = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        print(f"no checkpoint in {out}: starting from scratch")
    if resume_from is None and (out / "metrics.jsonl").exists() and trainer.accelerator.is_main_process:
        (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
    elif resume_from is not None and trainer.accelerator.is_main_process:
        _truncate_metrics(out / "metrics.jsonl", int(Path(resume_from).name.split("-")[-1]))
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.accelerator.is_main_process:
        trainer.save_model(str(out / "final"))
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are trained again, so nothing appears twice."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(r + "\n" for r in rows))
