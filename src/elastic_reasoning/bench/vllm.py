"""``elastic-reasoning bench vllm``: what the budgets cost inside vLLM, measured side by side in one run.

For each prompt length, the same requests (greedy, so every mode emits the same tokens) three ways:

* **one-pass**: the budget logits processor (thinking cut at ``t``, end of thinking forced, solution budget ``s``);
* **two-call**: phase 1 up to the end of thinking, phase 2 continues prompt + thinking (vLLM's prefix caching on,
  as by default, so phase 2 mostly reuses phase 1's KV blocks);
* **plain**: no budget, no processor work, each request asked for exactly the tokens the one-pass run emitted.

Ratios: ``overhead_vs_plain = one-pass / plain`` and ``two_call_over_one_pass = two-call / one-pass``. Runs are
interleaved and medians compared; the prefix cache is emptied before every timed run so no mode inherits another's
KV blocks. On the CPU the KV cache gets 4 GiB (``VLLM_CPU_KVCACHE_SPACE``, unless set): every request of a run must
fit, or preemptions and recomputation would blur the comparison. The default model is a random Llama (hidden 512, 8 layers, head size 64) built offline; ``--model``
measures any other. On a GPU machine the same command prints the same ratios.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path

from ..budget import BudgetConfig
from ..generation.record import SamplingConfig


def _save_bench_model(out: Path) -> str:
    from .generate import _bench_model

    model, tokenizer = _bench_model()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def run_vllm_bench(*, model: str | None = None, requests: int = 32, prompt_lengths=(64, 1024),
                   thinking_budget: int = 96, solution_budget: int = 32, repeats: int = 5, quick: bool = False,
                   log=None) -> dict:
    from vllm import SamplingParams

    from ..generation.engines import load_engine
    from .generate import _random_prompts

    if quick:
        requests, repeats, prompt_lengths = min(requests, 8), 2, [min(prompt_lengths)]
        thinking_budget, solution_budget = min(thinking_budget, 24), min(solution_budget, 8)

    def say(msg):
        if log is not None:
            print(msg, file=log, flush=True)

    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    with tempfile.TemporaryDirectory() as tmp:
        name = model or "random-llama-512x8 (bench default)"
        path = model or _save_bench_model(Path(tmp) / "bench-model")
        max_len = max(prompt_lengths) + thinking_budget + solution_budget + 16
        engine = load_engine(path, "vllm", max_model_len=max_len)
        llm = engine.llm
        budget = BudgetConfig(thinking_budget=thinking_budget, solution_budget=solution_budget,
                              eos_in_thinking="suppress")
        greedy = SamplingConfig(temperature=0.0)
        rows = []
        for length in prompt_lengths:
            prompts = _random_prompts(engine.tokenizer, requests, length, seed=length)
            reference = engine.generate(prompts, budget, greedy)  # warm-up, and the token counts plain must match
            plain_params = [SamplingParams(temperature=0.0, max_tokens=max(1, len(c.completion_ids)),
                                           min_tokens=len(c.completion_ids), ignore_eos=True) for c in reference]
            tokens = {"one-pass": sum(len(c.completion_ids) for c in reference)}

            def one_pass():
                return engine.generate(prompts, budget, greedy)

            def two_call():
                return engine.generate(prompts, budget, greedy, mode="two-call")

            def plain():
                return llm.generate([{"prompt_token_ids": p} for p in prompts], plain_params, use_tqdm=False)

            times: dict[str, list[float]] = {"one-pass": [], "two-call": [], "plain": []}
            for r in range(repeats):
                for label, fn in (("one-pass", one_pass), ("two-call", two_call), ("plain", plain)):
                    llm.reset_prefix_cache()
                    start = time.perf_counter()
                    out = fn()
                    times[label].append(time.perf_counter() - start)
                    if r == 0 and label != "plain":
                        tokens[label] = sum(len(c.completion_ids) for c in out)
                    elif r == 0:
                        tokens[label] = sum(len(o.outputs[0].token_ids) for o in out)
                say(f"[bench vllm] prompt {length}: repeat {r + 1}/{repeats} "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({
                "prompt_length": length, "requests": requests, "seconds": med, "tokens": tokens,
                "overhead_vs_plain": med["one-pass"] / med["plain"],
                "two_call_over_one_pass": med["two-call"] / med["one-pass"],
            })
    return {
        "model": name, "thinking_budget": thinking_budget, "solution_budget": solution_budget, "repeats": repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [
        f"vLLM, {result['model']}; t = {result['thinking_budget']}, s = {result['solution_budget']}, greedy; "
        f"medians of {result['repeats']} interleaved repeats; same tokens in every mode",
        "",
        "| prompt tokens | requests | one-pass s | two-call s | plain s | overhead_vs_plain | two-call / one-pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s = row["seconds"]
        lines.append(f"| {row['prompt_length']} | {row['requests']} | {s['one-pass']:.2f} | {s['two-call']:.2f} | "
                     f"{s['plain']:.2f} | {row['overhead_vs_plain']:.2f} | {row['two_call_over_one_pass']:.2f} |")
    lines.append("")
    lines.append("tokens emitted: " + "; ".join(
        f"prompt {r['prompt_length']}: " + ", ".join(f"{k} {v}" for k, v in r["tokens"].items())
        for r in result["rows"]))
    return "\n".join(lines)
