"""Seeds: fresh ones that touch no global generator, and derived ones that cannot collide. No torch.

A run with base seed ``b`` gives every (step, process, slot) its own seed by packing the three numbers into disjoint
bit fields and mixing in ``b`` with an XOR, which is a bijection: two different triples of one run never get the same
seed (unlike ``b + 1000003 * step + process`` schemes, which collide as soon as a slot offset is added). ``slot`` is
a request group (server mode) or a request within a call (vLLM seeds per request).
"""

from __future__ import annotations

import hashlib
import secrets

STEP_BITS, PROCESS_BITS, SLOT_BITS = 24, 16, 23  # 63 bits: a non-negative int64, as vLLM and torch accept
MAX_SEED = (1 << 63) - 1


def fresh_seed() -> int:
    """A seed from the operating system's entropy, for a call that was given none (never ``torch.seed()``, which
    reseeds torch's global generator under everyone else's feet)."""
    return secrets.randbits(63)


def _mix(base: int) -> int:
    digest = hashlib.blake2b(str(int(base)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED


def derive_seed(base: int, *, step: int = 0, process: int = 0, slot: int = 0) -> int:
    """The seed of one (step, process, slot) of a run seeded with ``base``; injective in (step, process, slot)."""
    for name, value, bits in (("step", step, STEP_BITS), ("process", process, PROCESS_BITS), ("slot", slot, SLOT_BITS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise ValueError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")
    packed = (step << (PROCESS_BITS + SLOT_BITS)) | (process << SLOT_BITS) | slot
    return packed ^ _mix(base)
