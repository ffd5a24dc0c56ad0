"""A quiet console for long training: one progress bar instead of the Trainer's per-step log lines.

transformers' ``Trainer`` prints every log dict (``PrinterCallback``, or ``ProgressCallback`` writing through its
bar); with ``logging_steps=1`` that is thousands of lines in a demo. :func:`quiet` removes both and advances a bar
the caller owns (one bar per stage, with its ETA); the logs themselves still reach ``metrics.jsonl`` through
``train.MetricsCallback``.
"""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class BarCallback(TrainerCallback):
    """Advances ``bar`` (a tqdm bar) by one per optimizer step, on the main process."""

    def __init__(self, bar):
        self.bar = bar

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar.update(1)


def quiet(trainer, bar=None) -> None:
    """Silence ``trainer``'s console logging; advance ``bar`` per step instead (when given)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if bar is not None:
        trainer.add_callback(BarCallback(bar))
