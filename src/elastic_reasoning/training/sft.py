"""Supervised warm-up on worked examples (prompt, thinking, solution), with the transformers ``Trainer``.

Each example becomes ``prompt <think> thinking </think> solution EOS`` through the model's chat template. The loss
covers exactly the tokens the model would *sample* at inference:

* the prompt is masked;
* when an example's thinking was cut (``cut=True``: training data that teaches reasoning after a cut), the
  end-of-thinking sequence is masked too — at inference the budget forces it, so the model must not learn to
  close its thinking at a random point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class WorkedExample:
    prompt: str
    thinking: str
    solution: str
    cut: bool = False


def encode_example(tokenizer, example: WorkedExample, end_thinking: str = "</think>", start_thinking: str = "<think>"):
    """``(input_ids, labels)`` for one example; labels are -100 where no loss applies."""
    from ..generation.prompts import render_prompt

    prompt_ids = render_prompt(tokenizer, example.prompt, start_thinking)
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False) if text else []  # noqa: E731
    thinking_ids, end_ids, solution_ids = enc(example.thinking), enc(end_thinking), enc(example.solution)
    eos = [tokenizer.eos_token_id]
    input_ids = prompt_ids + thinking_ids + end_ids + solution_ids + eos
    end_labels = [-100] * len(end_ids) if example.cut else end_ids
    labels = [-100] * len(prompt_ids) + thinking_ids + end_labels + solution_ids + eos
    return input_ids, labels


def add_thinking_tokens(model, tokenizer, texts: Sequence[str] = ("<think>", "</think>")) -> list[int]:
    """Make each of ``texts`` one special token of ``tokenizer`` and ``model``, as Qwen3 and DeepSeek-R1 ship
    ``<think>`` and ``</think>``; returns the ids added (none when each already is one token).

    Why: a multi-token end of thinking can be written in part. SmolLM2 spells ``</think>`` as ``</``, ``think``,
    ``>``; an E1 trained on it learnt to write ``</think`` and leave the ``>`` to the budget's forced end (forced
    tokens carry no loss), so with no budget it thought longer than before training (docs/demo-smollm2/). One token is written
    whole or not at all. The new rows start at the mean of the embeddings of the pieces the text was made of (and
    the same for an untied output head), so the model first reads them as it read the text; they must then train
    (full fine-tuning, or ``LoraSettings.trainable_tokens``)."""
    pieces = {t: tokenizer.encode(t, add_special_tokens=False) for t in texts}
    new = [t for t in texts if len(pieces[t]) != 1]
    if not new:
        return []
    tokenizer.add_tokens(new, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(new)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    inputs, outputs = model.get_input_embeddings().weight, getattr(model.get_output_embeddings(), "weight", None)
    with torch.no_grad():
        for text, i in zip(new, ids):
            inputs[i] = inputs[pieces[text]].mean(dim=0)
            if outputs is not None and outputs.data_ptr() != inputs.data_ptr():
                outputs[i] = outputs[pieces[text]].mean(dim=0)
    return ids


class _Collator:
    """Batches of examples, right-padded to the longest (``packed=False``), or packed: the batch's examples placed
    end to end into as few rows as hold them (first-fit decreasing, rows as wide as the longest example), each with
    its own position ids from 0 and no attention mask, from which transformers builds a block-diagonal causal mask
    (``masking_utils.find_packed_sequence_indices``; TRL's ``padding_free`` and transformers'
    ``DataCollatorWithFlattening`` rely on the same rule). Every token sees exactly what it sees alone, so the loss is
    the padded batch's, with the padding's compute gone: the demo's batches of 64 are about 40 % padding. An
    example's first token is never a label, so no loss crosses from one example into the next."""

    def __init__(self, pad_id: int, packed: bool = False):
        self.pad_id = pad_id
        self.packed = packed

    def __call__(self, rows):
        if self.packed:
            return self._packed(rows)
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: training needs no generation-style alignment
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def _packed(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        bins: list[list[int]] = []
        room: list[int] = []
        for k in sorted(range(len(rows)), key=lambda k: -len(rows[k]["input_ids"])):
            n = len(rows[k]["input_ids"])
            j = next((j for j, free in enumerate(room) if free >= n), None)
            if j is None:
                bins.append([]), room.append(width)
                j = len(bins) - 1
            bins[j].append(k)
            room[j] -= n
        ids = torch.full((len(bins), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(bins), width), -100, dtype=torch.long)
        positions = torch.zeros((len(bins), width), dtype=torch.long)
        for b, members in enumerate(bins):
            at = 0
            for k in members:
                n = len(rows[k]["input_ids"])
                ids[b, at : at + n] = torch.tensor(rows[k]["input_ids"])
                labels[b, at : at + n] = torch.tensor(rows[k]["labels"])
                labels[b, at] = -100
                positions[b, at : at + n] = torch.arange(n)
                at += n
            positions[b, at:] = torch.arange(width - at)  # the row's tail: a sequence of its own, no labels
        # use_cache=False: transformers looks for packed sequences only when no cache is being built
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}


def packing_is_exact(model) -> bool:
    """Whether ``model`` keeps packed examples apart (its attention honours packed position ids): the logits of two
    examples packed into one row against each alone. Architectures that build their masks without transformers'
    ``masking_utils`` would let them attend to each other; the warm-up pads those instead."""
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (5, 7))
    device = next(model.parameters()).device
    ids = torch.tensor([a + b], device=device)
    positions = torch.tensor([list(range(5)) + list(range(7))], device=device)  # as _Collator packs them
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
            alone_b = model(input_ids=torch.tensor([b], device=device), use_cache=False).logits[0]
    finally:
        model.train(was_training)
    return torch.allclose(together[5:].float(), alone_b.float(), atol=1e-4, rtol=1e-3)


def supervised_warmup(model, tokenizer, examples: Sequence[WorkedExample], output_dir: str, *, steps: int = 1500,
                      batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0, end_thinking: str = "</think>",
                      progress: bool = True, bf16: bool = False, bar=None, group_by_length: bool = False,
                      lora=None, packed: bool = True):
    """Train ``model`` in place on ``examples`` for ``steps`` optimizer steps; returns the final training loss.
    ``bar``: a tqdm bar advanced per step, replacing the Trainer's console output. ``group_by_length``: batches of
    examples of similar length (transformers' ``LengthGroupedSampler``), so less of each batch is padding.
    ``lora``: a ``training.lora.LoraSettings`` with ``r > 0`` trains adapters only, merged into ``model``'s weights
    at the end (peft injects and merges in place: ``model`` is the trained model either way). ``packed``: each
    batch's examples packed end to end into fewer rows (``_Collator``; the same loss without the padding's compute),
    where the model keeps packed examples apart (``packing_is_exact``; otherwise padded, with a warning)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from .lora import merge_lora, with_lora

    base = model
    model = with_lora(model, lora) if lora is not None else model

    rows = []
    for ex in examples:
        input_ids, labels = encode_example(tokenizer, ex, end_thinking)
        rows.append({"input_ids": input_ids, "labels": labels})
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(100, steps // 10),
        weight_decay=0.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
        dataloader_drop_last=True,
        bf16=bf16,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    if packed and not packing_is_exact(model):
        import warnings

        warnings.warn(f"{type(base).__name__} does not keep packed examples apart: the warm-up pads its batches instead",
                      stacklevel=2)
        packed = False
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=_Collator(tokenizer.pad_token_id, packed=packed))
    if bar is not None:
        from .progress import quiet

        quiet(trainer, bar)
    result = trainer.train()
    merged = merge_lora(model)
    if merged is not base:  # peft's merge returns the very model it wrapped; anything else would be lost here
        raise RuntimeError("LoRA merge did not return the wrapped model")
    return result.training_loss
