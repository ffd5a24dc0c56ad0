"""The main job: reproduce Elastic Reasoning end to end on a CPU, on the tiny model and the synthetic task.

``elastic-reasoning demo [--quick] [--out runs/demo]`` (what ``make demo`` runs):

1. build the tiny Llama-style model (offline);
2. supervised warm-up on worked examples with needlessly long thinking, some of them cut at a random point with a
   solution that finishes the remaining steps (``training/sft.py``);
3. from the same warm-up, for each seed: GRPO with budget-constrained rollouts (E1, ``t*``/``s*``) and vanilla GRPO
   (no thinking budget), on TRL (``training/train.py``);
4. budget sweep of all of them with the ``elastic`` method on held-out problems, at budgets tighter and looser than
   ``t*`` and with no budget, sampling at T=1;
5. ``runs/demo/``: ``summary.json`` (one record per model and thinking budget), ``results.md`` (table, with the
   ceiling of a model that merely writes the minimal trace), ``accuracy_vs_tokens.png``.

Stages whose outputs exist are skipped, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seeds: int = 2
    """RL seeds (and evaluation seeds of the warm-up model)."""
    train_problems: int = 4000
    heldout_problems: int = 500
    # model
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 3
    """Head size 96 / 3 = 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 24), so the demo's
    checkpoints also run in vLLM."""
    intermediate_size: int = 256
    # warm-up
    warmup_steps: int = 1500
    warmup_batch: int = 64
    warmup_lr: float = 3e-3
    cut_fraction: float = 0.15
    """Share of warm-up examples whose thinking is cut at a random point (the solution finishes the steps)."""
    # GRPO
    grpo_steps: int = 100
    prompts_per_step: int = 16
    rollouts_per_prompt: int = 8
    grpo_lr: float = 2e-4
    grpo_beta: float = 0.0
    """KL coefficient to the warm-up model (keeps what the warm-up knows when no budget applies)."""
    thinking_budget: int = 32
    """t*: just above the minimal trace of the hardest problems (8 terms: 29 tokens + its own </think>)."""
    solution_budget: int = 16
    """s (E1's s*, and every evaluation's s, as in the paper): room to finish at most 3 remaining steps after a cut
    and answer (``S + x = S' ...`` is 4 tokens a step, ``answer S`` and EOS 3 more). Smaller than the work of a whole
    problem, as a solution budget is in the paper's setting: a solution cannot redo the thinking a cut removed, so
    the thinking a model did before the cut is what counts."""
    vanilla_max_tokens: int = 160
    # evaluation
    budgets: list[int] = field(default_factory=lambda: [8, 16, 24, 32, 40, 48, 64])
    eval_max_tokens: int = 256
    """Cap of the no-budget evaluation."""
    quick: bool = False

    @classmethod
    def quick_variant(cls, out: str = "runs/demo-quick") -> "DemoConfig":
        """Minutes, not tens of minutes: checks the pipeline end to end, not the scientific claim."""
        return cls(out=out, seeds=2, train_problems=600, heldout_problems=60, warmup_steps=120, grpo_steps=4,
                   prompts_per_step=8, rollouts_per_prompt=4, budgets=[8, 32, 64], quick=True)


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stage:
    """A named stage with its duration printed; the whole list is the progress display of the demo."""

    def __init__(self, index: int, total: int, name: str):
        self.label = f"stage {index}/{total}: {name}"

    def __enter__(self):
        self.start = time.perf_counter()
        _say(f"{self.label} ...")
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            _say(f"{self.label} done in {time.perf_counter() - self.start:.0f}s")


# -- stages ------------------------------------------------------------------------------------------------------
def build_base(cfg: DemoConfig, path: Path) -> None:
    from .models.toy import build_toy_model, build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    model = build_toy_model(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                            num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, initializer_range=0.02,
                            max_position_embeddings=512)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def warmup(cfg: DemoConfig, base: Path, path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data.synthetic import generate_problems, training_examples
    from .training.sft import WorkedExample, supervised_warmup

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    problems = generate_problems(cfg.train_problems, "train", seed=0)
    examples = [WorkedExample(e.problem.prompt, e.thinking, e.solution, e.cut)
                for e in training_examples(problems, seed=0, cut_fraction=cfg.cut_fraction)]
    loss = supervised_warmup(model, tokenizer, examples, str(path) + ".tmp", steps=cfg.warmup_steps,
                             batch_size=cfg.warmup_batch, learning_rate=cfg.warmup_lr)
    _say(f"warm-up loss {loss:.3f}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def grpo(cfg: DemoConfig, start: Path, path: Path, mode: str, seed: int) -> None:
    from .training.config import from_dict
    from .training.train import train

    recipe = {
        "model": {"name_or_path": str(start)},
        "data": {"dataset": "synthetic", "synthetic": {"num_problems": cfg.train_problems}},
        "rollout": {"mode": mode, "thinking_budget": cfg.thinking_budget, "solution_budget": cfg.solution_budget},
        "rewards": ["synthetic"],
        "trainer": {
            "output_dir": str(path) + ".run", "max_steps": cfg.grpo_steps, "learning_rate": cfg.grpo_lr,
            "lr_scheduler_type": "constant", "per_device_train_batch_size": cfg.prompts_per_step * cfg.rollouts_per_prompt,
            "num_generations": cfg.rollouts_per_prompt, "beta": cfg.grpo_beta, "loss_type": "dapo", "temperature": 1.0,
            "top_p": 1.0, "max_completion_length": cfg.vanilla_max_tokens, "save_strategy": "no",
            "logging_steps": 1, "report_to": "none", "seed": seed, "disable_tqdm": False,
        },
    }
    run_dir = train(from_dict(recipe))
    final = run_dir / "final"
    final.rename(path)


def evaluate(cfg: DemoConfig, model_dir: Path, seed: int) -> list[dict]:
    """Per thinking budget (and None): accuracy and token means on the held-out problems, one sampling seed."""
    from .budget import BudgetConfig
    from .data.synthetic import generate_problems, score_synthetic
    from .generation.record import SamplingConfig
    from .generation.engines import load_engine

    engine = load_engine(str(model_dir), "transformers", device="cpu", max_batch_size=256)
    problems = generate_problems(cfg.heldout_problems, "test", seed=0)
    prompts = [p.prompt for p in problems]
    rows = []
    for budget in [*cfg.budgets, None]:
        if budget is None:
            config = BudgetConfig(max_total_tokens=cfg.eval_max_tokens)
        else:
            config = BudgetConfig(thinking_budget=budget, solution_budget=cfg.solution_budget)
        out = engine.generate(prompts, config, SamplingConfig(temperature=1.0, top_p=1.0, seed=seed))
        correct = [score_synthetic(c.solution, p.answer, thinking_ended=c.thinking_ended,
                                   stopped=c.finish_reason == "stop") for c, p in zip(out, problems)]
        n = len(out)
        rows.append({
            "thinking_budget": budget,
            "accuracy": 100.0 * sum(correct) / n,
            "thinking_tokens": sum(c.thinking_tokens for c in out) / n,
            "solution_tokens": sum(c.solution_tokens for c in out) / n,
            "truncated_fraction": sum(c.thinking_truncated for c in out) / n,
        })
    return rows


def minimal_trace_ceiling(cfg: DemoConfig) -> dict:
    """Accuracy (%) of a model that writes exactly the minimal trace and can only answer if it was not cut."""
    from .data.synthetic import generate_problems

    problems = generate_problems(cfg.heldout_problems, "test", seed=0)
    # the minimal trace has 4n - 3 tokens; with its own </think> the model samples 4n - 2 while thinking
    needed = [len(p.minimal_thinking().split()) + 1 for p in problems]
    return {b: 100.0 * sum(k <= b for k in needed) / len(needed) for b in cfg.budgets}


def summarize(cfg: DemoConfig, evals: dict[str, list[list[dict]]]) -> list[dict]:
    """One record per (model, thinking budget), means and spreads over seeds."""
    ceiling = minimal_trace_ceiling(cfg)
    records = []
    for model, runs in evals.items():
        for k, row in enumerate(runs[0]):
            per_seed = [run[k] for run in runs]
            acc = [r["accuracy"] for r in per_seed]
            budget = row["thinking_budget"]
            records.append({
                "model": model,
                "thinking_budget": budget,
                "seen_in_training": model == "e1" and budget == cfg.thinking_budget,
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "thinking_tokens_mean": statistics.fmean(r["thinking_tokens"] for r in per_seed),
                "solution_tokens_mean": statistics.fmean(r["solution_tokens"] for r in per_seed),
                "truncated_fraction_mean": statistics.fmean(r["truncated_fraction"] for r in per_seed),
                "minimal_trace_ceiling": ceiling.get(budget) if budget is not None else 100.0,
                "seeds": len(per_seed),
                "heldout_problems": cfg.heldout_problems,
            })
    return records


def write_report(cfg: DemoConfig, records: list[dict], out: Path, elapsed: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [*cfg.budgets, None]
    by = {(r["model"], r["thinking_budget"]): r for r in records}
    models = [m for m in ("warmup", "vanilla", "e1") if (m, None) in by]
    lines = [
        f"Held-out problems: {cfg.heldout_problems}, sampling at T=1, {cfg.seeds} seeds (mean ± std). "
        f"t* = {cfg.thinking_budget} (E1's training budget); solution budget s = {cfg.solution_budget} in training "
        "and in every evaluation. Accuracy % "
        "(thinking tokens in parentheses).",
        "",
        "| thinking budget | " + " | ".join(models) + " | minimal-trace ceiling |",
        "|---|" + "---|" * (len(models) + 1),
    ]
    for b in budgets:
        label = "none" if b is None else (f"**{b} (t\\*)**" if b == cfg.thinking_budget else str(b))
        cells = []
        for m in models:
            r = by[(m, b)]
            cells.append(f"{r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} ({r['thinking_tokens_mean']:.1f})")
        ceiling = by[(models[0], b)]["minimal_trace_ceiling"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ceiling:.1f} |")
    lines += ["", f"Demo wall time: {elapsed / 60:.1f} min."]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, color in zip(models, ("tab:gray", "tab:blue", "tab:red")):
        pts = [by[(m, b)] for b in cfg.budgets]
        ax.plot([p["thinking_tokens_mean"] + p["solution_tokens_mean"] for p in pts],
                [p["accuracy_mean"] for p in pts], "o-", color=color, label=m)
        nb = by[(m, None)]
        ax.plot([nb["thinking_tokens_mean"] + nb["solution_tokens_mean"]], [nb["accuracy_mean"]], "*", color=color,
                markersize=12)
    ax.set_xlabel("mean tokens (thinking + solution); stars: no budget")
    ax.set_ylabel("accuracy on held-out problems (%)")
    ax.set_title("Elastic Reasoning on the synthetic task (tiny model, CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tokens.png", dpi=100)
    plt.close(fig)


def run_demo(cfg: DemoConfig) -> Path:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(cfg.out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    start = time.perf_counter()
    seeds = list(range(cfg.seeds))
    total = 5
    with Stage(1, total, "build the tiny model"):
        if not (models / "base" / "config.json").exists():
            build_base(cfg, models / "base")
    with Stage(2, total, f"supervised warm-up ({cfg.warmup_steps} steps)"):
        if not (models / "warmup" / "config.json").exists():
            warmup(cfg, models / "base", models / "warmup")
    with Stage(3, total, f"GRPO, E1 (t*={cfg.thinking_budget}, s*={cfg.solution_budget}) and vanilla, "
                         f"{cfg.grpo_steps} steps x {len(seeds)} seeds"):
        for seed in seeds:
            for mode, name in (("elastic", "e1"), ("vanilla", "vanilla")):
                target = models / f"{name}-seed{seed}"
                if not (target / "config.json").exists():
                    _say(f"{name}, seed {seed}")
                    grpo(cfg, models / "warmup", target, mode, seed)
    evals_path = out / "evals.json"
    evals: dict = json.loads(evals_path.read_text()) if evals_path.exists() else {}
    with Stage(4, total, f"budget sweep on {cfg.heldout_problems} held-out problems"):
        plan = [("warmup", f"warmup@{s}", models / "warmup", s) for s in seeds]
        plan += [(name, f"{name}-seed{s}", models / f"{name}-seed{s}", s) for name in ("vanilla", "e1") for s in seeds]
        for name, key, path, seed in plan:
            if key not in evals:
                _say(f"evaluating {key}")
                evals[key] = {"model": name, "rows": evaluate(cfg, path, seed)}
                evals_path.write_text(json.dumps(evals))
    with Stage(5, total, "report"):
        grouped: dict[str, list] = {}
        for entry in evals.values():
            grouped.setdefault(entry["model"], []).append(entry["rows"])
        records = summarize(cfg, grouped)
        (out / "summary.json").write_text(json.dumps(records, indent=1))
        write_report(cfg, records, out, time.perf_counter() - start)
    print((out / "results.md").read_text())
    _say(f"wrote {out}/summary.json, results.md, accuracy_vs_tokens.png")
    return out

