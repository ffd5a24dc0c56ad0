"""Test formats of the code benchmarks, normalised: what a code problem's tests are, independent of who runs them.

Shared by the data loaders (which check a row's tests when they load it) and the code reward (which runs them), so
neither imports the other. Pure standard library; nothing here runs code.

Formats (:func:`parse_tests`), the ones the benchmarks ship:

* APPS / TACO ``input_output``: ``{"inputs": [...], "outputs": [...]}``, stdin -> stdout; with ``"fn_name"``
  call-based (``inputs[i]`` is the argument list, ``outputs[i]`` the value, often wrapped in a one-item list);
* LiveCodeBench: a list of ``{"input", "output", "testtype": "stdin" | "functional"}``; functional inputs are one
  JSON value per line, the function named by ``metadata.func_name`` (a ``class Solution`` method when there is one);
* HumanEval(+): ``{"test": "def check(candidate): ...", "entry_point": "name"}``, optionally with the benchmark's
  ``"prompt"`` (the stub and the helpers it defines, which ``check`` may call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CodeTests:
    """Tests of one problem, normalised."""

    kind: str
    """``stdio`` | ``call`` | ``program``."""
    inputs: list[Any] = field(default_factory=list)
    """stdio: stdin text per test; call: the argument list per test."""
    outputs: list[Any] = field(default_factory=list)
    """stdio: expected stdout text; call: the expected value."""
    fn_name: str | None = None
    """call: the function (or ``Solution`` method) to call."""
    wrapped_outputs: bool = False
    """call, APPS/TACO style: an expected ``[v]`` also accepts ``v``."""
    program: str | None = None
    """program (HumanEval): the test code defining ``check(candidate)``."""
    entry_point: str | None = None
    """program: the function passed to ``check``."""
    prompt: str | None = None
    """program: the benchmark's own prompt (stub and helpers); when given, helpers ``check`` calls (HumanEval/32's
    ``poly``, /38's ``encode_cyclic``...) come from it rather than from the candidate's program."""

    def __len__(self) -> int:
        return 1 if self.kind == "program" else len(self.inputs)


def parse_tests(tests: Any, *, fn_name: str | None = None, entry_point: str | None = None,
                metadata: Any = None) -> CodeTests:
    """Normalise tests in any supported format; ``ValueError`` with a one-line reason when they are unusable."""
    if isinstance(tests, CodeTests):
        return tests
    if isinstance(tests, (bytes, str)):
        try:
            tests = json.loads(tests)
        except ValueError as exc:
            raise ValueError(f"tests are not valid JSON: {exc}") from None
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else None
        except ValueError:
            metadata = None
    if isinstance(tests, dict):
        if "input_output" in tests:  # a whole TACO/APPS row
            return parse_tests(tests["input_output"], fn_name=fn_name or tests.get("fn_name"))
        if "test" in tests and ("entry_point" in tests or entry_point):
            program = tests["test"]
            name = tests.get("entry_point") or entry_point
            prompt = tests.get("prompt")
            if not isinstance(program, str) or not program.strip() or not name:
                raise ValueError("HumanEval tests need a non-empty 'test' program and an 'entry_point'")
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"HumanEval entry_point must be a Python name, got {name!r}")
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError("HumanEval 'prompt' must be text")
            return CodeTests("program", program=program, entry_point=name, prompt=prompt or None)
        if "inputs" in tests and "outputs" in tests:
            return _apps(tests, fn_name)
        if "tests" in tests:
            meta = tests.get("metadata", metadata)
            return parse_tests(tests["tests"], fn_name=fn_name or tests.get("fn_name"), metadata=meta)
        raise ValueError("unrecognised tests: expected APPS/TACO {'inputs','outputs'}, HumanEval "
                         "{'test','entry_point'} or a LiveCodeBench list")
    if isinstance(tests, list):
        return _livecodebench(tests, fn_name, metadata)
    raise ValueError(f"unrecognised tests of type {type(tests).__name__}")


def _as_text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _apps(tests: dict, fn_name: str | None) -> CodeTests:
    inputs, outputs = tests["inputs"], tests["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("APPS/TACO tests need 'inputs' and 'outputs' lists of the same length")
    if not inputs:
        raise ValueError("no tests")
    name = tests.get("fn_name") or fn_name
    if name:
        args = [i if isinstance(i, list) else [i] for i in inputs]
        return CodeTests("call", args, list(outputs), fn_name=name, wrapped_outputs=True)
    return CodeTests("stdio", [_as_text(i) for i in inputs], [_as_text(o) for o in outputs])


def _livecodebench(tests: list, fn_name: str | None, metadata: Any) -> CodeTests:
    if not tests:
        raise ValueError("no tests")
    if not all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        raise ValueError("LiveCodeBench tests must be a list of {'input', 'output', 'testtype'}")
    kinds = {t.get("testtype", "stdin") for t in tests}
    if kinds == {"stdin"}:
        return CodeTests("stdio", [str(t["input"]) for t in tests], [str(t["output"]) for t in tests])
    if kinds != {"functional"}:
        raise ValueError(f"mixed LiveCodeBench test types {sorted(kinds)}")
    name = fn_name or (metadata or {}).get("func_name") or (tests[0].get("metadata") or {}).get("func_name")
    if not name:
        raise ValueError("functional LiveCodeBench tests need metadata.func_name")
    try:
        args = [[json.loads(line) for line in str(t["input"]).split("\n") if line.strip()] for t in tests]
        expected = [json.loads(t["output"]) if isinstance(t["output"], str) else t["output"] for t in tests]
    except ValueError as exc:
        raise ValueError(f"functional LiveCodeBench tests must hold JSON values: {exc}") from None
    return CodeTests("call", args, expected, fn_name=name)


def select_tests(suite: CodeTests, max_tests: int | None) -> CodeTests:
    """At most ``max_tests`` tests, those with the longest inputs (original order kept), as the official code keeps
    the 15 longest."""
    if suite.kind == "program" or max_tests is None or len(suite.inputs) <= max_tests:
        return suite
    sizes = [len(x) if isinstance(x, str) else len(json.dumps(x, default=str)) for x in suite.inputs]
    keep = sorted(sorted(range(len(sizes)), key=lambda i: -sizes[i])[:max_tests])
    return CodeTests(suite.kind, [suite.inputs[i] for i in keep], [suite.outputs[i] for i in keep],
                     fn_name=suite.fn_name, wrapped_outputs=suite.wrapped_outputs)
