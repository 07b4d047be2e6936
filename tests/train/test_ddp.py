"""DDP under torchrun: 2 CPU processes (gloo) x 1 crop train what 1 process trains on the batch of 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dacs_uda.config import ConfigError, load_params, run_outputs
from dacs_uda.models.checkpoint import load_checkpoint
from dacs_uda.stages import data as data_stage
from dacs_uda.stages import prepare, train, validate
from dacs_uda.train.tasks import adaptation_task
from dacs_uda.utils.dist import NPROC_ENV, SINGLE, Ranks, ranks_from_env, torchrun_command
from tests.conftest import tiny_params, write_params

STEPS = 4
# Relative difference (norm of the difference / norm) allowed per tensor. Measured after 4 steps:
# at most 1.3e-7 (pretrain) and 2.2e-7 (adapt), float rounding only (sums in another order, the global
# BN statistics in float64). At the embedded lr (1e-2) this 4-channel model amplifies rounding about
# 10x per step (a 1e-7 perturbation of the weights grows to 3e-3 in 6 steps), hence lr 1e-3.
TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data prepared; pretrain and adapt run 4 steps of batch 2 (log windows of 2 steps)."""
    root = tmp_path_factory.mktemp("ddp")
    params = tiny_params()
    for section in (params.pretrain, params.adapt):
        section.optim.iterations, section.optim.lr, section.log_every = STEPS, 1e-3, 2
    params.train.checkpoint_every = 0
    write_params(root, params)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for main in (data_stage.main, validate.main, prepare.main):
            assert main() == 0
    return root


def on_two_processes(project: Path, section: str) -> None:
    """``train@<section>`` as dvc.yaml runs it, with ``DACS_NPROC_PER_NODE=2``: the stage reruns itself
    under ``torchrun --standalone --nproc-per-node 2``; fails with its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DACS_LOG_LEVEL": "WARNING", NPROC_ENV: "2"}
    command = [sys.executable, "-m", "dacs_uda.stages.train", "--section", section]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    teacher = ckpt["ema_model"] or {}
    return {**ckpt["model"], **{f"ema.{k}": v for k, v in teacher.items()}}


def assert_close(ddp: dict[str, torch.Tensor], single: dict[str, torch.Tensor]) -> None:
    assert ddp.keys() == single.keys()
    errors = {
        k: float((ddp[k].double() - single[k].double()).norm() / single[k].double().norm().clamp_min(1e-12))
        for k in single
        if single[k].is_floating_point()
    }
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= TOLERANCE, f"{worst}: relative difference {errors[worst]:.2e}"
    assert any(errors.values())  # two processes did run (float rounding differs from one)
    counters = [k for k in single if not single[k].is_floating_point()]
    assert all(torch.equal(ddp[k], single[k]) for k in counters)  # BN batches tracked: same steps


def run_both(project: Path, section: str) -> tuple[dict, dict, list]:
    """The stage's checkpoint and curve from 1 process, then from torchrun with 2 (fresh resume state)."""
    params = load_params(project / "params.yaml")
    cfg = run_outputs(params, section)
    resume = Path(params.train.resume_dir) / f"{section}.pt"
    assert train.main(["--section", section]) == 0
    single, curve = tensors(Path(cfg.checkpoint)), Path(cfg.curve).read_text()
    shutil.copy(cfg.checkpoint, "single.pt")
    resume.unlink()  # else the DDP run resumes at the last step (the state is the same global state)
    on_two_processes(project, section)
    ddp = tensors(Path(cfg.checkpoint))
    shutil.copy("single.pt", cfg.checkpoint)  # the next stage starts from the single-process model
    return single, ddp, [curve, Path(cfg.curve).read_text()]


def curve_values(text: str) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in text.splitlines()[1:]]


def test_ddp_pretrain_matches_one_process_with_the_whole_batch(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    single, ddp, curves = run_both(project, "pretrain")
    assert_close(ddp, single)
    one, two = (curve_values(text) for text in curves)
    assert [row[0] for row in two] == [2, 4]  # only rank 0 wrote, one row per window of 2 steps
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)  # global-batch loss


def test_ddp_adapt_matches_one_process_with_the_whole_batch(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    params = load_params()
    if not Path(run_outputs(params, "pretrain").checkpoint).is_file():
        assert train.main(["--section", "pretrain"]) == 0
    assert (params.adapt.method, params.adapt.fidelity, params.train.sync_bn) == ("dacs", "official", True)
    single, ddp, curves = run_both(project, "adapt")
    assert_close(ddp, single)
    one, two = (curve_values(text) for text in curves)
    # loss_source, loss_mix, lambda (the confident fraction of the global batch) per window
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)


def test_a_global_batch_not_divisible_by_the_processes_is_refused() -> None:
    params = tiny_params()
    params.adapt.optim.batch_size = 3
    with pytest.raises(ConfigError, match=r"`adapt.optim.batch_size` \(3\) is the global batch .* \(2\)"):
        adaptation_task(params, torch.device("cpu"), Ranks(rank=1, local_rank=1, world_size=2))


def test_each_rank_loads_its_share_of_the_global_batch() -> None:
    shards = [Ranks(rank, rank % 2, 4).shard(8, "adapt.optim.batch_size") for rank in range(4)]
    assert [list(s) for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert SINGLE.shard(3, "pretrain.optim.batch_size") == range(3)


def test_torchrun_environment_is_read_and_its_absence_is_a_single_process() -> None:
    assert ranks_from_env({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}) == Ranks(5, 1, 8)
    assert ranks_from_env({}) == SINGLE and SINGLE.is_main and not SINGLE.distributed
    assert not Ranks(5, 1, 8).is_main


def test_the_stage_reruns_under_torchrun_only_when_asked() -> None:
    argv = ["--section", "adapt"]
    asked = {NPROC_ENV: "4"}
    assert torchrun_command("dacs_uda.stages.train", argv, asked) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "dacs_uda.stages.train", "--section", "adapt",
    ]  # fmt: skip
    assert torchrun_command("dacs_uda.stages.train", argv, {}) is None
    assert torchrun_command("dacs_uda.stages.train", argv, {**asked, "WORLD_SIZE": "4"}) is None  # inside it
    with pytest.raises(ConfigError, match="DACS_NPROC_PER_NODE='two'"):
        torchrun_command("dacs_uda.stages.train", argv, {NPROC_ENV: "two"})
