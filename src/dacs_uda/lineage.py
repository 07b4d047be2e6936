"""Lineage: what produced an artefact (code, params, seeds, data). One definition for checkpoints,
ONNX metadata, the run's lineage report and the flows (docs/traceability.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dacs_uda.config import Params, params_hash

# Keys every lineage carries (the retrain flow and the tests rely on them being non-empty).
LINEAGE_KEYS = ("git_revision", "params_hash", "seed", "data_seed", "data_pair", "data_version")
# What the retrain flow requires of a model before it promotes it (its ONNX metadata).
REQUIRED_FOR_PROMOTION = ("git_revision", "params_hash", "seed", "data_version")
UNKNOWN = "unknown"


def git_revision(repo: str | Path = ".") -> str:
    """The git commit of ``repo`` (``+dirty`` when tracked files changed), or ``unknown`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        )
        return rev + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN


def lineage(params: Params, data_version: str) -> dict[str, Any]:
    """What produced an artefact: code revision, params hash, seeds, dataset pair and content version.

    Args:
        params: The run's validated params.
        data_version: The content version of the dataset the run read
            (:func:`dacs_uda.data.version.prepared_data_version`, or ``validate``'s own).
    """
    return {
        "git_revision": git_revision(),
        "params_hash": params_hash(params),
        "seed": params.seed,
        "data_seed": params.data.embedded.seed,
        "data_pair": params.data.pair,
        "data_version": data_version,
    }


def missing_lineage(record: dict[str, Any], keys: tuple[str, ...] = REQUIRED_FOR_PROMOTION) -> list[str]:
    """The ``keys`` that are absent, empty or ``unknown`` in a lineage record."""
    return [key for key in keys if record.get(key) in (None, "", UNKNOWN)]
