"""Reward functions for the training tests, loaded by dotted path (tests.train_rewards:NAME)."""

SEEN_COLUMNS: list[set] = []


def first_word_is_even_number(prompts, completions, completion_ids=None, solution=None, **columns):
    """1 when the solution starts with an even number: cheap, and about half the rollouts of a random model get it
    (numbers are most of the toy vocabulary, so "starts with a number" alone gave whole groups equal rewards)."""
    SEEN_COLUMNS.append(set(columns) | {"solution"} if solution is not None else set(columns))
    return [1.0 if (s or "").split()[:1] and s.split()[0].isdigit() and int(s.split()[0]) % 2 == 0 else 0.0
            for s in solution]
