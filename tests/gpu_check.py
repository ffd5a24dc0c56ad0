"""`make gpu-check`: everything this project can only check on a GPU, in one run, printing PASS/FAIL and step times.

1. The environment: torch and CUDA, the GPU, vLLM, DeepSpeed.
2. The budget logits processor on the model runner vLLM picks by default on this GPU, and on the V1 runner. (vLLM's
   V2 model runner, its default on GPUs with Triton, refuses logits processors written to the V1 interface, which
   the budget processor is; training then picks the V1 runner by itself, see docs/scaling.md.)
3. Every test marked `gpu` (`pytest -m gpu tests`: ZeRO-3 and FSDP with the transformers engine, vLLM colocate with
   sleep mode and with tensor parallelism, server mode with TRL's NCCL weight transfer; those needing 2 GPUs skip on
   one, with the reason).
4. A 20-step E1 run of recipes/e1-math-1.5b.yaml on a small public model (default Qwen/Qwen3-0.6B), budgets inside
   vLLM (TRL colocate on this GPU), every completion of every step checked against t* = s* = 1024, with the median
   step time.

Run it where `pip install -e '.[vllm,dev]' deepspeed` gave a CUDA torch, with network for the model and the dataset
(or local paths): `make gpu-check GPU_PYTHON=python`, or `python -m tests.gpu_check [--model M] [--dataset D]
[--steps 20] [--skip-tests]` from the repository root. Logs go to runs/gpu-check/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def run(cmd: list[str], log: Path, env: dict | None = None, timeout: float = 7200) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start


def environment() -> bool:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return report("CUDA GPU", False, "torch sees no CUDA device (torch " + torch.__version__ + ")")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    report("CUDA GPU", True, f"{torch.cuda.device_count()} x {names}; torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda}")
    for package in ("vllm", "deepspeed", "trl", "transformers", "accelerate"):
        found = importlib.util.find_spec(package) is not None
        version = ""
        if found:
            from importlib.metadata import PackageNotFoundError, version as package_version

            try:
                version = package_version(package)
            except PackageNotFoundError:
                version = "?"
        print(f"       {package}: {version if found else 'not installed'}")
    return True


def gpu_tests(out: Path, name: str, selection: str) -> None:
    """The gpu-marked tests of tests/test_distributed_gpu.py that ``selection`` (pytest -k) picks, one line each."""
    log = out / f"pytest-{name}.log"
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    code, seconds = run([sys.executable, "-m", "pytest", "-m", "gpu", "-k", selection, "-v", "-rs",
                         "-p", "no:cacheprovider", "tests/test_distributed_gpu.py"], log, env=env)
    lines = log.read_text().splitlines()
    for line in lines:
        if "::" in line and any(word in line for word in ("PASSED", "FAILED", "SKIPPED", "ERROR")):
            test = line.split("::")[-1].split()[0]
            if "SKIPPED" in line:
                print(f"[SKIP] {test}", flush=True)
            else:
                report(f"gpu test {test}", "PASSED" in line)
        elif line.startswith("SKIPPED") or line.startswith("E   ") and "V2" in line:
            print(f"       {line}", flush=True)
    summary = lines[-1] if lines else "(no output)"
    report(f"pytest -m gpu ({name})", code == 0, f"{summary.strip('= ')} in {seconds:.0f} s (log: {log})")


def e1_run(out: Path, model: str, dataset: str | None, steps: int) -> None:
    """20 steps of the E1 math recipe on one GPU: budgets inside vLLM (colocate), every completion checked."""
    run_dir, dumps = out / "e1", out / "e1-rollouts"
    for path in (run_dir / "metrics.jsonl", *dumps.glob("rank*.jsonl")):
        path.unlink(missing_ok=True)
    args = ["--config", "recipes/e1-math-1.5b.yaml", "--model.name_or_path", model, "--max_steps", str(steps),
            "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1", "--steps_per_generation", "1",
            "--num_generations", "8", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
            "--vllm_max_model_length", "4096", "--save_strategy", "no", "--report_to", "none",
            "--output_dir", str(run_dir), "--data.limit", "4000"]
    if dataset:
        args += ["--data.dataset", dataset]
    env = dict(os.environ, ROLLOUT_DUMP_DIR=str(dumps), TRL_EXPERIMENTAL_SILENCE="1")
    log = out / "e1.log"
    code, seconds = run([sys.executable, "-m", "tests.distributed_run", *args], log, env=env)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        report(f"E1 {steps} steps ({model})", False, f"exit {code} after {seconds:.0f} s (log: {log})\n{tail}")
        return
    rows = [json.loads(line) for path in sorted(dumps.glob("rank*.jsonl")) for line in path.read_text().splitlines()]
    bad = []
    for row in rows:
        for i, ids in enumerate(row["completion_ids"]):
            t, s = row["thinking_budget"][i], row["solution_budget"][i]
            if not len(ids) == len(row["env_mask"][i]) == len(row["logprobs"][i]):
                bad.append(f"step {row['step']} #{i}: ids, mask and log-probs of different lengths")
            if row["thinking_tokens"][i] > t or row["solution_tokens"][i] > s:
                bad.append(f"step {row['step']} #{i}: thinking {row['thinking_tokens'][i]}/{t}, "
                           f"solution {row['solution_tokens'][i]}/{s}")
            forced = sum(math.isnan(lp) for lp in row["logprobs"][i])  # a forced token's log-prob is NaN
            if row["thinking_truncated"][i] and forced == 0:
                bad.append(f"step {row['step']} #{i}: cut, yet no forced token")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [m["step_time"] for m in metrics if "step_time" in m]
    completions = sum(len(r["completion_ids"]) for r in rows)
    ok = not bad and len(metrics) == steps and len({r["step"] for r in rows}) == steps
    detail = (f"{len(metrics)} steps logged, {completions} completions checked, "
              f"median step {statistics.median(times[1:] or times):.1f} s (first {times[0]:.1f} s), "
              f"mean thinking {statistics.mean(m['rollout/thinking_tokens'] for m in metrics):.0f} tokens, "
              f"cut fraction {statistics.mean(m['rollout/cut_fraction'] for m in metrics):.2f}, "
              f"reward {statistics.mean(m.get('reward', 0.0) for m in metrics):.3f}; {seconds:.0f} s in all")
    if bad:
        detail += "; budget violations: " + "; ".join(bad[:5])
    report(f"E1 {steps} steps ({model}, budgets inside vLLM)", ok, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("GPU_CHECK_MODEL", "Qwen/Qwen3-0.6B"),
                        help="small public model for the E1 run (a hub id or a local directory)")
    parser.add_argument("--dataset", default=os.environ.get("GPU_CHECK_DATASET"),
                        help="training data for the E1 run (default: the recipe's DeepScaleR dataset)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true", help="only the processor checks and the E1 run")
    parser.add_argument("--out", default="runs/gpu-check")
    args = parser.parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not environment():
        return 1
    gpu_tests(out, "processor", "budget_processor")  # the default model runner of this GPU, and V1
    if not args.skip_tests:
        gpu_tests(out, "scale-out", "not budget_processor")
    e1_run(out, args.model, args.dataset, args.steps)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"\n{'ALL PASSED' if not failed else 'FAILED: ' + ', '.join(failed)} ({len(RESULTS)} checks; logs in {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
