"""A tiny random causal LM and tokenizer, built entirely offline.

Llama-style config (so transformers and vLLM both reload it with the same tokenizer class; head size 32 by default,
the smallest vLLM's CPU attention supports), a word-level tokenizer
whose vocabulary suits short arithmetic (the numbers 0-999 are single tokens), the special tokens ``<think>``,
``</think>``, EOS ``</s>`` and pad ``<pad>``, and a chat template whose generation prompt opens thinking.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<think>", "</think>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = (
    "+ - * / = ? . , : ; ( ) ! % ok no yes so then check sum of the is what add and answer total step numbers "
    "digits find compute result carry plus minus times equals a an we have now let s first next finally wait "
    "hmm again problem number value partial running x y n k"
).split()
NUMBERS = [str(i) for i in range(1000)]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> <think>{% endif %}"
)


def build_toy_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + NUMBERS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


TOY_VERSION = 2
"""Bumped whenever the default toy model changes (2: head size 32), so cached copies are rebuilt."""


def build_toy_model(
    tokenizer,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    initializer_range: float = 0.2,
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_toy_model(out: str | Path, *, seed: int = 0, **model_kwargs) -> Path:
    """Build the tiny model and tokenizer and save both with ``save_pretrained``. Returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_toy_tokenizer()
    model = build_toy_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
