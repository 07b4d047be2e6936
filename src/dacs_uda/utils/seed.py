"""Seeding and determinism, driven by ``params.yaml`` (``seed``, ``deterministic``)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch and set the determinism flags.

    The library draws all of its own randomness from keyed generators (:mod:`dacs_uda.utils.rng`);
    the global seeds only pin down third-party code (weight initialisation, for instance).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
