"""Several processes under ``torchrun`` (DDP), and the same calls as no-ops in a single process.

``torchrun`` starts one process per device and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``). :func:`process_group` reads it, joins the group (NCCL on CUDA, gloo on
the CPU) and leaves it cleanly; without those variables it yields :data:`SINGLE` and touches nothing,
so a plain ``python -m ...`` run is exactly the single-process run.

Cross-rank statistics go through a :data:`RankMean`: the mean over ranks of a tensor that every rank
computes on its equal share of the global batch, which is then the statistic of the global batch.
Library functions take one as an argument and default to :func:`local` (the identity).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from dacs_uda.config import ConfigError
from dacs_uda.utils.device import pick_device

log = logging.getLogger(__name__)

# A tensor computed on this rank's share of the batch -> its mean over the ranks (same shape).
RankMean = Callable[[torch.Tensor], torch.Tensor]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The :data:`RankMean` of a single process: the tensor itself."""
    return tensor


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over every rank of the process group (a new tensor, float for an integer
    one; no gradient)."""
    total = tensor.detach().clone() if tensor.is_floating_point() else tensor.detach().float()
    dist.all_reduce(total)
    return total / dist.get_world_size()


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int
    local_rank: int  # the device index on this node
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs, logs at INFO and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def mean(self) -> RankMean:
        return mean_over_ranks if self.distributed else local

    def shard(self, batch_size: int, key: str) -> range:
        """The global batch indices this rank loads: ``[rank * b, (rank + 1) * b)``, ``b = batch / world``.

        Args:
            batch_size: The global batch (``<section>.optim.batch_size``).
            key: The params key of ``batch_size``, for the error message.
        """
        if batch_size % self.world_size:
            raise ConfigError(
                f"params.yaml: `{key}` ({batch_size}) is the global batch and must be divisible by the "
                f"number of processes ({self.world_size}): change it, or torchrun's --nproc-per-node "
                "and --nnodes"
            )
        share = batch_size // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)

    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` for each of several processes; otherwise the single process's device."""
        return pick_device(self.local_rank if self.distributed else None)


SINGLE = Ranks(rank=0, local_rank=0, world_size=1)


# Set it (`DACS_NPROC_PER_NODE=2 dvc exp run`) and a training stage started as a plain process reruns
# itself under torchrun on that many processes of this node: dvc.yaml's command stays `python -m ...`.
NPROC_ENV = "DACS_NPROC_PER_NODE"


def torchrun_command(module: str, argv: list[str], env: Mapping[str, str] = os.environ) -> list[str] | None:
    """The command that reruns ``python -m module argv`` under torchrun on ``$DACS_NPROC_PER_NODE``
    processes; None when that is not set, or when this process already runs under torchrun."""
    value = env.get(NPROC_ENV, "")
    if not value or "WORLD_SIZE" in env:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{NPROC_ENV}={value!r}: must be a number of processes >= 1 (one per GPU)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={value}",
            "-m", module, *argv]  # fmt: skip


def ranks_from_env(env: Mapping[str, str] = os.environ) -> Ranks:
    """The place torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or :data:`SINGLE`."""
    if "WORLD_SIZE" not in env:
        return SINGLE
    return Ranks(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"]))


@contextmanager
def process_group(env: Mapping[str, str] = os.environ) -> Iterator[Ranks]:
    """Join the torchrun process group for the block (a no-op for a single process).

    Other ranks than 0 log warnings only. On a normal exit every rank waits for the others (rank 0 may
    still be writing outputs) before the group is destroyed.
    """
    ranks = ranks_from_env(env)
    if not ranks.distributed:
        yield ranks
        return
    device = ranks.device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    # device_id binds NCCL to this process's GPU (barriers and collectives then never guess it)
    dist.init_process_group(
        backend,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    if not ranks.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("rank %d of %d (%s, %s)", ranks.rank, ranks.world_size, backend, device)
    try:
        yield ranks
        dist.barrier()
    finally:
        dist.destroy_process_group()


def same_on_every_rank(value: int, what: str) -> None:
    """Raise unless every rank holds the same ``value`` (no-op in a single process)."""
    if not dist.is_initialized():
        return
    on_gpu = dist.get_backend() == "nccl"  # NCCL reduces device tensors only
    bounds = torch.tensor([value, -value], device=torch.cuda.current_device() if on_gpu else "cpu")
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if int(bounds[0]) != -int(bounds[1]):
        raise RuntimeError(f"{what} differs between ranks ({-int(bounds[1])} to {int(bounds[0])})")


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) on every rank (no-op in a single process)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the statistics of the global batch in training mode.

    For the CPU (gloo): ``torch.nn.SyncBatchNorm`` only runs on accelerators. The per-channel sums are
    all-reduced by a differentiable (functional) collective, so the backward pass all-reduces their
    gradients too; with DDP's gradient average the result is that of one process holding the whole
    batch. The sums are taken in float64, which keeps the one-pass variance ``E[x^2] - E[x]^2`` accurate.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, wide = (0, 2, 3), x.double()
        local_sums = torch.stack([wide.sum(dims), (wide * wide).sum(dims)])
        world = dist.group.WORLD
        assert world is not None  # initialised (checked above)
        sums = funcol.wait_tensor(funcol.all_reduce(local_sums, "sum", world))
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean, var = sums[0] / count, sums[1] / count - (sums[0] / count) ** 2
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running_stats(mean.detach(), var.detach() * count / max(count - 1, 1))
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        out = (x - mean.to(x.dtype).view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every plain BatchNorm2d replaced, in place, by one with global-batch statistics.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`CrossRankBatchNorm2d` on the CPU. Parameters and
    buffers are moved over, not copied: an optimiser built before still updates them, and the state dict
    keeps its keys. Layers converted before are left as they are.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, _converted(child, device))
        else:
            sync_batchnorm(child, device)
    return module


def _converted(bn: nn.BatchNorm2d, device: torch.device) -> nn.Module:
    kind = nn.SyncBatchNorm if device.type == "cuda" else CrossRankBatchNorm2d
    new = kind(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    return new.train(bn.training)
