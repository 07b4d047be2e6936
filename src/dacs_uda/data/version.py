"""``data_version``: a content hash of the dataset a run used, recorded in every artefact's lineage.

The ``validate`` stage already reads every raw file in full (to decode it), so it also records the
SHA-256 of each file's bytes in the validated manifest (``image_sha256``, ``label_sha256``);
``prepare`` carries them into the prepared manifest that training reads (``raw_image_sha256``,
``raw_label_sha256``). The data version is then a hash over the manifest rows, not over the files
again: computing it costs one CSV read, whatever the dataset's size.

Definition: SHA-256 over the sorted lines ``"<domain> <split> <image sha256> <label sha256>"`` of
every pair in the source and target manifests, first :data:`VERSION_CHARS` hex digits. It changes
when any byte of a used image or label changes, when a pair is added, dropped or moves split; it
does not change with paths (a dataset moved to another root keeps its version) nor with the
processing (resize, crop: those are in the params hash).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import pandas as pd

from dacs_uda.config import DOMAINS, Params
from dacs_uda.data.datasets import manifest_path
from dacs_uda.lineage import UNKNOWN

log = logging.getLogger(__name__)

VERSION_CHARS = 16
# Column prefix of the raw files' hashes: validated manifests name the raw file `image`, prepared
# ones `raw_image` (their `image` is the resized copy).
VALIDATED_PREFIX = ""
PREPARED_PREFIX = "raw_"


def data_version(manifests: Mapping[str, pd.DataFrame], prefix: str = VALIDATED_PREFIX) -> str:
    """The content version of the pairs in ``manifests`` (domain -> rows); see the module docstring.

    Args:
        manifests: Rows with ``split`` and ``<prefix>image_sha256`` / ``<prefix>label_sha256``.
        prefix: :data:`VALIDATED_PREFIX` or :data:`PREPARED_PREFIX`.

    Raises:
        ValueError: A manifest lacks the hash columns or a row lacks a hash.
    """
    columns = [f"{prefix}image_sha256", f"{prefix}label_sha256"]
    lines = []
    for domain, rows in manifests.items():
        missing = [c for c in columns if c not in rows.columns]
        if missing:
            raise ValueError(f"the {domain} manifest has no {missing} column (rerun `dvc repro validate`)")
        hashes = rows[columns].fillna("").astype(str)
        if (hashes == "").any(axis=None):
            raise ValueError(f"the {domain} manifest has rows without a content hash")
        splits = rows["split"].astype(str)
        lines += [f"{domain} {s} {i} {lb}" for s, i, lb in zip(splits, *hashes.T.values, strict=True)]
    digest = hashlib.sha256("\n".join(sorted(lines)).encode())
    return digest.hexdigest()[:VERSION_CHARS]


def prepared_data_version(params: Params) -> str:
    """The data version of the prepared manifests a training/evaluation run reads.

    ``unknown`` (with a warning) when they are missing or predate the hash columns: lineage must not
    stop a run that has its data, e.g. a test that writes its own manifests.
    """
    try:
        manifests = {domain: pd.read_csv(manifest_path(params, domain), dtype=str) for domain in DOMAINS}
        return data_version(manifests, PREPARED_PREFIX)
    except (OSError, ValueError) as err:
        log.warning("data_version unknown: %s", err)
        return UNKNOWN
