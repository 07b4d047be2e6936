"""Lineage: what produced an artefact (code, params, seeds, data). One definition for checkpoints,
metrics files and ONNX metadata (docs/traceability.md)."""

from __future__ import annotations

import subprocess
from typing import Any

from dacs_uda.config import Params, params_hash
from dacs_uda.data.version import prepared_data_version

# Keys every lineage carries (the retrain flow and the tests rely on them being non-empty).
LINEAGE_KEYS = ("git_revision", "params_hash", "seed", "data_seed", "data_pair", "data_version")


def git_revision() -> str:
    """The current git commit (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return rev + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage(params: Params, data_version: str | None = None) -> dict[str, Any]:
    """What produced an artefact: code revision, params hash, seeds, dataset pair and content version.

    Args:
        params: The run's validated params.
        data_version: The dataset's content version when the caller has it (``validate``, which runs
            before the prepared manifests exist); by default that of the prepared manifests.
    """
    return {
        "git_revision": git_revision(),
        "params_hash": params_hash(params),
        "seed": params.seed,
        "data_seed": params.data.embedded.seed,
        "data_pair": params.data.pair,
        "data_version": prepared_data_version(params) if data_version is None else data_version,
    }


def with_lineage(metrics: dict[str, Any], run_lineage: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``lineage`` as its first key (metrics files: readers skip the non-metric dict)."""
    return {"lineage": run_lineage, **metrics}
