"""Random streams keyed by what they are for, so that no draw depends on who else draws.

Every random number the library draws comes from a generator made here, keyed by the run's ``seed``
and by names and integers that say what it is for (a stream, a step, a sample's global index in the
batch). The draws of one sample therefore do not depend on the number of loader workers (which
pre-fetch keys ahead of training), on the other samples of its batch, or on how a batch is split
over processes: sample ``i`` of step ``s`` sees the same numbers whichever rank holds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def keyed_seed(seed: int, *key: str | int) -> int:
    """A 63-bit seed derived from ``seed`` and ``key`` (SHA-256 of their text; stable across platforms)."""
    text = "/".join(str(part) for part in (seed, *key))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def keyed_generator(seed: int, *key: str | int) -> torch.Generator:
    """A CPU generator seeded with :func:`keyed_seed` of ``seed`` and ``key``."""
    generator = torch.Generator()
    generator.manual_seed(keyed_seed(seed, *key))
    return generator


@dataclass(frozen=True)
class StepRandom:
    """The generators of one training step: one for batch-level draws, one per sample.

    ``batch`` serves draws made once for the whole batch (the official code's single jitter/blur
    decision); ``samples[i]`` serves the draws of the i-th sample this process holds (its class mask,
    CutMix box, jitter factors, blur sigma).
    """

    batch: torch.Generator
    samples: tuple[torch.Generator, ...]


def step_random(seed: int, stream: str, step: int, indices: Sequence[int]) -> StepRandom:
    """Generators for ``step`` of ``stream``; ``indices`` are the samples' global positions in the batch."""
    return StepRandom(
        batch=keyed_generator(seed, stream, step),
        samples=tuple(keyed_generator(seed, stream, step, index) for index in indices),
    )


def substream(rng: StepRandom, name: str) -> StepRandom:
    """Generators of the ``name`` sub-stream of ``rng``, keyed by each generator's seed and ``name``.

    A strategy added to a step draws from its own sub-stream, so switching it on shifts none of the
    step's existing draws; the draws stay per sample, so a slice of ``rng.samples`` gives the slice.
    """
    return StepRandom(
        batch=keyed_generator(rng.batch.initial_seed(), name),
        samples=tuple(keyed_generator(generator.initial_seed(), name) for generator in rng.samples),
    )
