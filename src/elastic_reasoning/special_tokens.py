"""Resolve the texts that delimit thinking into token ids, through the tokenizer, once. Never a literal id.

Duck-typed over a Hugging Face tokenizer (``encode``/``decode``/``eos_token_id``/``pad_token_id``); no torch import.
"""

from __future__ import annotations

from collections.abc import Iterable

from .budget import BudgetConfig, BudgetTokens


class TokenizerError(ValueError):
    """The tokenizer cannot represent a text the budget needs."""


def encode_exact(tokenizer, text: str, what: str) -> tuple[int, ...]:
    """Encode ``text`` without special-token wrapping and check it decodes back to the same text."""
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise TokenizerError(f"the tokenizer encodes the {what} text {text!r} to no tokens")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise TokenizerError(f"the tokenizer cannot encode the {what} text {text!r} (it maps to the unknown token)")
    decoded = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded.strip() != text.strip():
        raise TokenizerError(
            f"the tokenizer cannot encode the {what} text {text!r} faithfully: it decodes back as {decoded!r}"
        )
    return ids


def eos_token_ids(tokenizer, extra: Iterable[int] | int | None = None) -> frozenset[int]:
    """EOS ids: the tokenizer's plus any the model's generation config declares (chat models often have several)."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(extra, int):
        ids.add(extra)
    elif extra is not None:
        ids.update(int(i) for i in extra)
    if not ids:
        raise TokenizerError("the tokenizer has no EOS token and the model declares none")
    return frozenset(ids)


def resolve_budget_tokens(tokenizer, config: BudgetConfig, extra_eos: Iterable[int] | int | None = None) -> BudgetTokens:
    """Look up every id the budget state machine needs; a clear error if the tokenizer cannot encode a text."""
    end_ids = encode_exact(tokenizer, config.end_thinking, "end-of-thinking")
    transition_ids = encode_exact(tokenizer, config.transition, "transition") if config.transition else ()
    eos = eos_token_ids(tokenizer, extra_eos)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = min(eos)
    if set(end_ids) & eos:
        raise TokenizerError(f"the end-of-thinking text {config.end_thinking!r} encodes to an EOS token")
    answer_ids = encode_exact(tokenizer, config.answer_prefix, "answer prefix") if config.answer_prefix else ()
    return BudgetTokens(end_thinking_ids=end_ids, transition_ids=transition_ids, eos_ids=eos, pad_id=int(pad),
                        answer_prefix_ids=answer_ids)


class BudgetTokenCache:
    """``resolve_budget_tokens`` once per distinct set of budget texts, for one tokenizer (what every engine keeps)."""

    def __init__(self, tokenizer, extra_eos: Iterable[int] | int | None = None):
        self.tokenizer = tokenizer
        self.extra_eos = extra_eos
        self._cache: dict[tuple[str, str, str], BudgetTokens] = {}

    def __call__(self, config: BudgetConfig) -> BudgetTokens:
        key = (config.end_thinking, config.transition, config.answer_prefix)
        if key not in self._cache:
            self._cache[key] = resolve_budget_tokens(self.tokenizer, config, self.extra_eos)
        return self._cache[key]
