"""Budgeted generation over any OpenAI-compatible completions endpoint (vLLM, SGLang, llama.cpp, this server).

Those servers offer at most a thinking budget and one ``max_tokens`` for everything; this engine gives them the
separate solution budget, phase by phase over the plain completions API (the paper's two-call mechanics):

1. **thinking**: ``max_tokens = t`` (or the total cap if smaller), ``stop = [end-of-thinking text]``, on the
   rendered prompt, which opens thinking;
2. **forcing**: if thinking was cut (``finish_reason == "length"``) the transition text (if any) and the
   end-of-thinking text are appended (only the rest of it if the thinking ends with a prefix of it), then the
   answer prefix (if any); if the model closed its thinking itself, the stop string was swallowed by the server and
   the end-of-thinking text is appended back;
3. **solution**: ``max_tokens = s`` (or what the total cap leaves) on prompt + thinking + end of thinking. Prefix
   caching on the upstream server makes this second prefill cheap.

Token counts: the upstream's ``usage`` (asked for in each streamed call) bounds what each phase sampled; with a
local tokenizer the thinking and solution texts are also counted locally, and the smaller count is reported (the
end-of-thinking tokens a model writes itself count in the upstream's usage but are not thinking content). With a
tokenizer, prompts may be chat messages or token ids; without one, a string prompt is sent as raw, already rendered
text. Every phase streams, so ``on_text`` sees thinking and solution as they arrive and a cancelled job closes its
upstream connection (which frees the upstream's slot too).

Not covered: the SUPPRESS rule for EOS in thinking needs ``logit_bias`` on the EOS id, sent only when a tokenizer
gives the id (and honoured only by upstreams that support it); without ``stop_reason`` in the upstream's answer an
EOS in thinking cannot be told from a written end of thinking, and both continue to the solution; log-probs are not
asked for (reported as NaN).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..budget import BudgetConfig, BudgetTokens, EosInThinking, ThinkingEnd
from ..special_tokens import BudgetTokenCache
from .prompts import Prompt, render_prompt
from .seeds import derive_seed
from .record import LOGPROBS_UNAVAILABLE, Completion, SamplingConfig, budgets_per_prompt

TextCallback = Callable[[int, str, str], None]  # (job, "thinking" | "solution", text delta)


class UpstreamError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class _Phase:
    text: str = ""
    finish_reason: str | None = None
    stop_reason: object = None
    has_stop_reason: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    aborted: bool = False


@dataclass
class _Job:
    index: int
    prompt: Prompt
    budget: BudgetConfig
    sampling: SamplingConfig
    seed: int | None
    on_text: TextCallback | None
    is_cancelled: Callable[[int], bool] | None
    extra: dict = field(default_factory=dict)


class RemoteEngine:
    """The engine interface (``generate`` -> list[Completion]) over an upstream OpenAI-compatible server."""

    streams_text = True  # streaming is text (on_text), not token ids

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None, tokenizer=None,
                 context_length: int | None = None, timeout: float = 600.0, max_parallel: int = 64):
        import httpx

        self.base_url = _v1(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
                                 limits=httpx.Limits(max_connections=max_parallel, max_keepalive_connections=max_parallel))
        self.tokenizer = tokenizer
        self.max_parallel = max_parallel
        self.model = model
        self.context_length = context_length
        self._budget_tokens = BudgetTokenCache(tokenizer) if tokenizer is not None else None
        if model is None or context_length is None:
            self._discover()

    def _discover(self) -> None:
        """The upstream's first model and its context length (vLLM and this server report ``max_model_len``)."""
        try:
            r = self.http.get("/models")
            r.raise_for_status()
            data = r.json().get("data") or []
        except Exception as err:
            if self.model is None:
                raise UpstreamError(getattr(getattr(err, "response", None), "status_code", 0) or 0,
                                    f"cannot list the upstream's models at {self.base_url}/models: {err}") from None
            return
        if not data:
            if self.model is None:
                raise UpstreamError(0, f"the upstream at {self.base_url} lists no models")
            return
        entry = next((d for d in data if d.get("id") == self.model), data[0])
        if self.model is None:
            self.model = entry["id"]
        if self.context_length is None and isinstance(entry.get("max_model_len"), int):
            self.context_length = entry["max_model_len"]

    def close(self) -> None:
        self.http.close()

    # -- the engine interface ----------------------------------------------------------------------------------
    def budget_tokens(self, budget: BudgetConfig) -> BudgetTokens:
        if self.tokenizer is None:
            raise ValueError("budget tokens need a local tokenizer")
        return self._budget_tokens(budget)

    def generate(
        self,
        prompts: Sequence[Prompt],
        budget: BudgetConfig | Sequence[BudgetConfig],
        sampling: SamplingConfig = SamplingConfig(),
        *,
        num_samples: int = 1,
        on_text: TextCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
        on_token=None,
        progress: bool = False,
    ) -> list[Completion]:
        """``num_samples`` completions per prompt, in prompt then sample order, the jobs run concurrently upstream.

        ``on_text(job, part, delta)`` streams text as it arrives (``part`` is ``thinking`` or ``solution``; an empty
        solution delta marks the end of thinking); a job whose ``is_cancelled(job)`` turns true closes its upstream
        call and ends with ``finish_reason == "abort"``. A failed job ends with ``finish_reason == "error"`` and
        ``extra["error"]`` / ``extra["status"]`` (the others are unaffected).
        """
        if on_token is not None:
            raise ValueError("the remote engine streams text (on_text), not token ids")
        budgets = budgets_per_prompt(prompts, budget, num_samples)
        jobs = []
        for p, (prompt, b) in enumerate(zip(prompts, budgets)):
            for s in range(num_samples):
                index = p * num_samples + s
                seed = None if sampling.seed is None else derive_seed(sampling.seed, slot=index)
                jobs.append(_Job(index, prompt, b, sampling, seed, on_text, is_cancelled, {"sample_index": s,
                                                                                           "prompt_index": p}))
        if not jobs:
            return []
        with ThreadPoolExecutor(min(len(jobs), self.max_parallel), thread_name_prefix="upstream") as pool:
            return list(pool.map(self._run_job, jobs))

    # -- one completion, phase by phase --------------------------------------------------------------------------
    def _run_job(self, job: _Job) -> Completion:
        budget = job.budget
        try:
            prompt = self._phase1_prompt(job.prompt, budget)
        except ValueError as err:
            return self._record(job, [], "", "", None, "error", extra={"error": str(err), "status": 400})
        t, s, cap = budget.thinking_budget, budget.solution_budget, budget.max_total_tokens
        if self.context_length is not None and self.tokenizer is not None:
            room = self.context_length - len(prompt if isinstance(prompt, list) else self._encode(prompt))
            cap = room if cap is None else min(cap, room)

        # Phase 1: thinking.
        thinking_end: ThinkingEnd | None = None
        if t == 0:
            first, thinking_end = _Phase(completion_tokens=0), ThinkingEnd.BUDGET
        else:
            extra_body = {}
            if budget.eos_in_thinking == EosInThinking.SUPPRESS and self.tokenizer is not None:
                eos = getattr(self.tokenizer, "eos_token_id", None)
                if eos is not None:
                    extra_body["logit_bias"] = {str(eos): -100}
            first = self._complete(job, prompt, _min(t, cap), [budget.end_thinking], "thinking", extra_body)
            if first.aborted or first.finish_reason == "error":
                return self._record(job, [first], first.text, "", None, "abort" if first.aborted else "error")
            if first.finish_reason == "stop":
                eos = first.has_stop_reason and first.stop_reason is None
                if eos and budget.eos_in_thinking == EosInThinking.STOP:
                    return self._record(job, [first], first.text, "", ThinkingEnd.EOS, "stop", ended=False)
                thinking_end = ThinkingEnd.EOS if eos else ThinkingEnd.MODEL
            elif t is not None and (cap is None or t <= cap):  # "length" under the thinking budget: a cut
                thinking_end = ThinkingEnd.BUDGET
            else:  # the total cap (or the context) ran out while thinking: no room for a solution
                return self._record(job, [first], first.text, "", None, "length", ended=False)

        # Forcing: what closes the thinking (counted against neither budget).
        thinking_raw = first.text
        end = budget.end_thinking
        if thinking_end == ThinkingEnd.BUDGET and budget.transition:
            forced, thinking_content = budget.transition + end, thinking_raw + budget.transition
        else:
            written = _written_prefix(thinking_raw, end) if thinking_end != ThinkingEnd.MODEL else 0
            forced, thinking_content = end[written:], thinking_raw[: len(thinking_raw) - written]
        if thinking_end == ThinkingEnd.BUDGET:
            forced += budget.answer_prefix
        if job.on_text is not None:
            if thinking_end == ThinkingEnd.BUDGET and budget.transition:
                job.on_text(job.index, "thinking", budget.transition)
            job.on_text(job.index, "solution", budget.answer_prefix if thinking_end == ThinkingEnd.BUDGET else "")
        answer_prefix = budget.answer_prefix if thinking_end == ThinkingEnd.BUDGET else ""
        forced_tokens = len(self._encode(forced)) if self.tokenizer is not None else 0

        # Phase 2: the solution, on prompt + thinking + end of thinking.
        used = (first.completion_tokens or 0) + forced_tokens
        left = None if cap is None else cap - used
        if s == 0 or (left is not None and left <= 0):
            second = _Phase(completion_tokens=0, finish_reason="length")
        else:
            if isinstance(prompt, list):
                second_prompt = prompt + self._encode(thinking_raw + forced)
            else:
                second_prompt = prompt + thinking_raw + forced
            second = self._complete(job, second_prompt, _min(s, left), None, "solution", {})
            if second.aborted or second.finish_reason == "error":
                return self._record(job, [first, second], thinking_content, answer_prefix + second.text, thinking_end,
                                    "abort" if second.aborted else "error", forced=forced, forced_tokens=forced_tokens)
        finish = "stop" if second.finish_reason == "stop" else "length"
        return self._record(job, [first, second], thinking_content, answer_prefix + second.text, thinking_end, finish,
                            forced=forced, forced_tokens=forced_tokens, thinking_raw=thinking_raw)

    def _phase1_prompt(self, prompt: Prompt, budget: BudgetConfig) -> str | list[int]:
        if self.tokenizer is not None:
            return render_prompt(self.tokenizer, prompt, budget.start_thinking)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("empty prompt")
            start = budget.start_thinking
            return prompt if not start or prompt.rstrip().endswith(start) else prompt + start
        raise ValueError("chat messages and token ids need a local tokenizer (RemoteEngine(tokenizer=...))")

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _complete(self, job: _Job, prompt, max_tokens: int | None, stop: list[str] | None, part: str,
                  extra_body: dict) -> _Phase:
        """One streamed call to the upstream's /completions."""
        sampling = job.sampling
        body = {"model": self.model, "prompt": prompt, "top_p": sampling.top_p,
                "temperature": 0.0 if sampling.greedy else sampling.temperature,  # below 1e-5 is greedy here too
                "stream": True, "stream_options": {"include_usage": True}, **extra_body}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stop:
            body["stop"] = stop
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if job.seed is not None:
            body["seed"] = job.seed
        out = _Phase()
        try:
            with self.http.stream("POST", "/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise UpstreamError(response.status_code, _error_message(response))
                for line in response.iter_lines():
                    if job.is_cancelled is not None and job.is_cancelled(job.index):
                        out.aborted = True
                        break  # leaving the block closes the connection: the upstream frees the slot too
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event and not event.get("choices"):
                        err = event["error"]
                        raise UpstreamError(502, err.get("message", str(err)) if isinstance(err, dict) else str(err))
                    for choice in event.get("choices") or ():
                        delta = choice.get("text") or ""
                        if delta:
                            out.text += delta
                            if job.on_text is not None:
                                job.on_text(job.index, part, delta)
                        if choice.get("finish_reason") is not None:
                            out.finish_reason = choice["finish_reason"]
                            if "stop_reason" in choice:
                                out.has_stop_reason, out.stop_reason = True, choice["stop_reason"]
                    usage = event.get("usage")
                    if usage:
                        out.prompt_tokens = usage.get("prompt_tokens")
                        out.completion_tokens = usage.get("completion_tokens")
        except UpstreamError as err:
            out.finish_reason = "error"
            job.extra.update(error=str(err), status=err.status)
        except Exception as err:  # connection refused, reset, timeout, garbage
            out.finish_reason = "error"
            job.extra.update(error=f"{type(err).__name__}: {err}", status=502)
        if out.completion_tokens is None and self.tokenizer is not None:
            out.completion_tokens = len(self._encode(out.text))
        return out

    def _record(self, job: _Job, phases: list[_Phase], thinking: str, solution: str, thinking_end: ThinkingEnd | None,
                finish: str, *, ended: bool | None = None, forced: str = "", forced_tokens: int = 0,
                thinking_raw: str | None = None, extra: dict | None = None) -> Completion:
        ended = thinking_end is not None if ended is None else ended
        first = phases[0] if phases else _Phase()
        second = phases[1] if len(phases) > 1 else None
        thinking_tokens = _count(first.completion_tokens, self._encode(thinking) if self.tokenizer else None)
        solution_tokens = 0
        if second is not None:  # the answer prefix is forced: only what phase 2 sampled counts
            solution_tokens = _count(second.completion_tokens, self._encode(second.text) if self.tokenizer else None)
        ids, mask = [], []
        solution_at = 0
        if self.tokenizer is not None:
            raw = thinking_raw if thinking_raw is not None else thinking
            parts = [(self._encode(raw), 1), (self._encode(forced), 0)]
            solution_at = sum(len(p) for p, _ in parts)
            if second is not None:
                parts.append((self._encode(second.text), 1))
            for part_ids, sampled in parts:
                ids += part_ids
                mask += [sampled] * len(part_ids)
        emitted = (first.completion_tokens or 0) + forced_tokens + ((second.completion_tokens or 0) if second else 0)
        info = {"completion_tokens": emitted, **job.extra, **(extra or {})}
        info.setdefault("prompt_tokens", first.prompt_tokens)
        end_index = min(len(self._encode(thinking)), len(ids)) if ended and self.tokenizer is not None else 0
        solution_index = max(end_index, min(solution_at, len(ids)))
        return Completion(
            prompt_index=job.extra.get("prompt_index", job.index), sample_index=job.extra.get("sample_index", 0),
            prompt_ids=[], completion_ids=ids, sampled_mask=mask, logprobs=[math.nan] * len(ids),
            thinking_tokens=thinking_tokens, solution_tokens=solution_tokens, forced_tokens=forced_tokens,
            thinking_truncated=thinking_end == ThinkingEnd.BUDGET,
            thinking_end=thinking_end.value if thinking_end else None, finish_reason=finish,
            end_thinking_index=end_index if ended else None, solution_index=solution_index if ended else None,
            thinking=thinking, solution=solution, extra=info,
            logprobs_kind=LOGPROBS_UNAVAILABLE,  # the upstream is not asked for log-probs: every entry is NaN
        )


def _count(upstream: int | None, local: list[int] | None) -> int:
    """Tokens of a phase: the smaller of the upstream's usage (which bounds what it sampled) and the local count."""
    counts = [c for c in (upstream, None if local is None else len(local)) if c is not None]
    return min(counts) if counts else 0


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _written_prefix(text: str, end: str) -> int:
    """Length of the longest proper prefix of ``end`` that ``text`` ends with."""
    for k in range(min(len(end) - 1, len(text)), 0, -1):
        if text.endswith(end[:k]):
            return k
    return 0


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def _error_message(response) -> str:
    try:
        body = response.json()
        err = body.get("error", body)
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except Exception:
        return response.text[:300]
