"""Where tensors run."""

from __future__ import annotations

import torch


def pick_device(index: int | None = None) -> torch.device:
    """The CUDA device ``index`` (the current one when None) when there is CUDA, else the CPU.

    With an index, that device also becomes the current one, so that libraries allocating on "the"
    CUDA device (NCCL, pinned-memory threads) use it; each torchrun process passes its ``LOCAL_RANK``.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if index is None:
        return torch.device("cuda")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
