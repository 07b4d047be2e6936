"""Check both datasets with Great Expectations before anything trains on them (the ``validate`` stage).

For each domain, :func:`~dacs_uda.data.manifest.build_manifest` decodes every file, and a suite of
expectations (:func:`build_suite`) runs over the manifest table: files readable, no missing pair,
image size equal to label size, label mode and ids, RGB(A) images, unique paths, rows per split
(the official counts for real data: GTA5 24,966, SYNTHIA 9,400, Cityscapes 2,975 + 500).

Reported problems of the GTA5 data (:data:`dacs_uda.data.formats.GTA5_KNOWN_DEFECTS`: frames whose
image and label sizes differ, missing pairs) are *warnings*: listed by file in the report and
counted in the metrics, never silently dropped. A row without a label or image is left out of the
manifest; a size mismatch is kept (``prepare`` resizes image and label to the same size, as the
official loader does). Every other failed check fails the dataset, unless ``data.on_bad_pair`` is
``skip``: then the pairs that fail a per-pair check are dropped from the manifest and listed, and only
dropping more than ``data.max_bad_fraction`` of a dataset's pairs fails it. The row-count checks count
the pairs found on disk, dropped ones included, so a skipped pair is never mistaken for a missing one.

The outcome of every check is a :class:`DatasetResult`; what is written from it (manifests, report,
metrics) is :mod:`dacs_uda.data.report`'s job.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.metadata_types import FailureSeverity
from great_expectations.expectations.row_conditions import Column

from dacs_uda.config import DOMAINS, DataConfig, DomainConfig
from dacs_uda.data.formats import FORMATS
from dacs_uda.data.manifest import build_manifest, io_processes
from dacs_uda.data.version import data_version
from dacs_uda.labels import MAX_LABEL_ID
from dacs_uda.lineage import UNKNOWN

log = logging.getLogger(__name__)

# Official dataset sizes, used for real (non-embedded) data pairs unless `data.<domain>.counts` is set.
OFFICIAL_COUNTS: dict[str, dict[str, int]] = {name: dict(f.counts) for name, f in FORMATS.items()}

FIX_REGENERATE = "regenerate with `dvc repro -f data` (real data: re-extract the official archive)"
FIX_ROOT = "check the dataset root and format in params.yaml, then `dvc repro -f data`"
FIX_COUNTS = FIX_ROOT + "; a deliberate subset of a real dataset needs its counts in `data.<domain>.counts`"
# What happens to a row that only triggers a warning (a reported problem of the real data).
KEPT_RESIZED = "kept: prepare resizes image and label to the same size (as the official loader)"
DROPPED = "left out of the manifest"
SKIPPED = "dropped from the manifest (data.on_bad_pair: skip)"
# Checks about the table, not one pair: `skip` never drops rows for them.
UNSKIPPABLE = frozenset({"unique image paths", "known splits"})
BAD_FRACTION_CHECK = "dropped pairs within data.max_bad_fraction"
FIX_BAD_FRACTION = (
    "too many pairs are bad to drop them: re-extract or re-download the dataset (see the skipped files), "
    "or raise `data.max_bad_fraction` if losing them is acceptable"
)


def label_values_regex(max_id: int) -> str:
    """A space-separated list of label ids in 0..``max_id``, written without leading zeros."""
    one = "(?:" + "|".join(str(i) for i in range(max_id, -1, -1)) + ")"
    return rf"^{one}(?: {one})*$"


LABEL_VALUES_REGEX = label_values_regex(MAX_LABEL_ID)


def expected_counts(data: DataConfig, domain: str) -> dict[str, int]:
    """Rows each split of ``domain`` ("source" or "target") must have.

    Args:
        data: The ``data`` section of the params.
        domain: ``"source"`` or ``"target"``.

    Returns:
        Split name -> row count: the configured sizes for the embedded pair, else the official sizes.
    """
    if data.pair == "embedded":
        emb = data.embedded
        if domain == "source":
            return {"train": emb.n_source}
        return {"train": emb.n_target_train, "val": emb.n_target_val}
    cfg: DomainConfig = getattr(data, domain)
    if cfg.counts is not None:
        return dict(cfg.counts)
    return dict(OFFICIAL_COUNTS[cfg.format])


def _meta(check: str, side: str, fix: str) -> dict[str, str]:
    """Expectation ``meta``: the check's name in reports, the file it blames, and how to fix it."""
    return {"check": check, "side": side, "fix": fix}


def _check_name(expectation: gxe.Expectation) -> str:
    """The name an expectation has in reports (its ``meta``)."""
    return str((expectation.meta or {})["check"])


def _file_expectations(fmt: str = "gta5", known_defects: bool = False) -> list[gxe.Expectation]:
    """Per-row expectations: presence, decodability, modes, label ids, sizes, uniqueness.

    With ``known_defects`` (real data), checks named in the format's ``warn_only`` (problems reported
    for copies of the real data) get severity ``warning``: reported, but they do not fail the stage. The
    embedded pair is generated, so there every check is fatal.
    """
    spec = FORMATS[fmt]
    label_ids = "Cityscapes label ids" if spec.max_label_id == MAX_LABEL_ID else "SYNTHIA class ids"
    checks: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(
            column="image", meta=_meta("image present", "image", FIX_REGENERATE)
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="label", meta=_meta("label present", "label", FIX_REGENERATE)
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="image_ok", value_set=[True], meta=_meta("image readable", "image", FIX_REGENERATE)
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label_ok", value_set=[True], meta=_meta("label readable", "label", FIX_REGENERATE)
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="image_mode", value_set=["RGB", "RGBA"], meta=_meta("image is RGB(A)", "image", FIX_ROOT)
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label_mode",
            value_set=list(spec.label_modes),
            meta=_meta(spec.label_mode_check, "label", FIX_ROOT),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="label_values",
            regex=label_values_regex(spec.max_label_id),
            meta=_meta(
                f"label ids in 0..{spec.max_label_id}",
                "label",
                FIX_ROOT + f" (labels must hold {label_ids})",
            ),
        ),
        *(
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=f"image_{dim}",
                column_B=f"label_{dim}",
                ignore_row_if="either_value_is_missing",
                meta=_meta(f"image {dim} == label {dim}", "pair", FIX_REGENERATE),
            )
            for dim in ("width", "height")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="image", meta=_meta("unique image paths", "image", FIX_ROOT)),
    ]
    for check in checks:
        if known_defects and _check_name(check) in spec.warn_only:
            check.severity = FailureSeverity.WARNING
    return checks


def _split_expectations(expected: dict[str, int]) -> list[gxe.Expectation]:
    """Table expectations: only the expected splits, each with its expected number of rows."""
    checks: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=sorted(expected), meta=_meta("known splits", "pair", FIX_ROOT)
        )
    ]
    for split, count in expected.items():
        checks.append(
            gxe.ExpectTableRowCountToEqual(
                value=count,
                row_condition=Column("split") == split,
                meta=_meta(f"rows in {split}", "table", FIX_COUNTS),
            )
        )
    return checks


def build_suite(
    name: str, expected: dict[str, int], fmt: str = "gta5", known_defects: bool = False
) -> gx.ExpectationSuite:
    """The expectation suite for one dataset manifest.

    Args:
        name: Suite name.
        expected: Split -> expected number of rows (see :func:`expected_counts`).
        fmt: Dataset format (label modes and ids, reported problems that only warn).
        known_defects: Let the format's reported problems (``warn_only``) only warn (real data).

    Returns:
        A suite whose expectations carry ``meta`` = {check, side, fix} for the report.
    """
    # Passed to the constructor: `add_expectation` would need an active context to save into.
    expectations = _file_expectations(fmt, known_defects) + _split_expectations(expected)
    return gx.ExpectationSuite(name=name, expectations=expectations)


def ge_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as Great Expectations sees it: missing values as nulls, so each check skips them.

    A missing file is reported once (by the "present" checks), not again as unreadable, mis-sized
    or of the wrong mode.
    """
    frame = manifest.copy()
    for kind in ("image", "label"):
        missing = frame[kind] == ""
        frame[kind] = frame[kind].astype(object).where(~missing, None)
        frame[f"{kind}_ok"] = frame[f"{kind}_ok"].astype(object).where(~missing, None)
        frame[f"{kind}_mode"] = (
            frame[f"{kind}_mode"].astype(object).where(frame[f"{kind}_mode"].notna(), None)
        )
        for dim in ("width", "height"):
            frame[f"{kind}_{dim}"] = frame[f"{kind}_{dim}"].astype("float64")  # NaN, not pd.NA
    frame["label_values"] = frame["label_values"].astype(object).where(frame["label_values"].notna(), None)
    return frame


@dataclass
class CheckResult:
    """Outcome of one expectation."""

    check: str
    success: bool
    failures: int  # rows that failed (file checks) or 1 (a failed table check)
    rows: list[int]  # manifest index of the failing rows
    side: str
    fix: str
    detail: str = ""  # observed vs expected, for table checks
    warning: bool = False  # a reported problem of the real data: listed, never fatal
    skipped: bool = False  # data.on_bad_pair skip: the failing rows are dropped, not fatal

    @property
    def fatal(self) -> bool:
        """Whether this outcome fails the dataset."""
        return self.kind == "fatal"

    @property
    def kind(self) -> str:
        """``pass``, ``warning``, ``skipped`` or ``fatal``: how the failing rows are treated."""
        if self.success:
            return "pass"
        return "warning" if self.warning else "skipped" if self.skipped else "fatal"


@dataclass
class DatasetResult:
    """Validation of one dataset: its manifest and every check."""

    name: str
    fmt: str
    root: str
    manifest: pd.DataFrame
    expected: dict[str, int]
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """Whether every check passed (warnings do not count against it)."""
        return not any(c.fatal for c in self.checks)

    def row(self, index: int) -> pd.Series:
        """The manifest row at ``index`` (a label of the manifest's index, as checks report them)."""
        row = self.manifest.loc[index]
        assert isinstance(row, pd.Series), f"manifest index {index} is not unique"
        return row

    def _files(self, kind: str) -> list[tuple[str, str, str]]:
        """(file, problem, fix or outcome) of the rows failing checks of ``kind`` (``CheckResult.kind``)."""
        found: dict[tuple[str, str], str] = {}
        for check in self.checks:
            if check.kind != kind:
                continue
            for index in check.rows:
                row = self.row(index)
                outcome = {"fatal": check.fix, "warning": _warning_outcome(row), "skipped": SKIPPED}[kind]
                found.setdefault((blamed_file(row, check.side), describe_problem(row, check)), outcome)
        return [(file, problem, fix) for (file, problem), fix in found.items()]

    def bad_files(self) -> list[tuple[str, str, str]]:
        """(file, problem, fix) for every row failing a fatal check, without repeats."""
        return self._files("fatal")

    def warning_files(self) -> list[tuple[str, str, str]]:
        """(file, problem, what the pipeline does with it) for every row with a reported problem."""
        return self._files("warning")

    def skipped_files(self) -> list[tuple[str, str, str]]:
        """(file, problem, outcome) for every pair dropped by ``data.on_bad_pair: skip``."""
        return self._files("skipped")

    def skipped_rows(self) -> set[int]:
        """Manifest index of every pair dropped by ``data.on_bad_pair: skip``."""
        return {index for check in self.checks if check.skipped for index in check.rows}

    def passed_rows(self) -> pd.DataFrame:
        """Manifest rows usable for training: none blamed by a fatal check, none missing a side.

        Rows with a warning that are kept carry its text in the ``warning`` column.
        """
        bad = {index for check in self.checks if not check.warning for index in check.rows}
        notes: dict[int, list[str]] = {}
        for check in self.checks:
            if check.warning:
                for index in check.rows:
                    notes.setdefault(index, []).append(describe_problem(self.row(index), check))
        incomplete = set(self.manifest.index[(self.manifest["image"] == "") | (self.manifest["label"] == "")])
        rows = self.manifest.drop(index=sorted(bad | incomplete)).copy()
        if "warning" in rows.columns:
            rows["warning"] = [
                "; ".join(dict.fromkeys(notes.get(index, []))) for index in rows.index.tolist()
            ]
        return rows


def _warning_outcome(row: pd.Series) -> str:
    """What the pipeline does with a row that has a reported problem of the real data."""
    return DROPPED if row["image"] == "" or row["label"] == "" else KEPT_RESIZED


def blamed_file(row: pd.Series, side: str) -> str:
    """The file a failure is about: the checked side, or the other side when that one is missing."""
    first, second = ("label", "image") if side == "label" else ("image", "label")
    return row[first] or row[second]


def describe_problem(row: pd.Series, check: CheckResult) -> str:
    """A one-line, human-readable description of why ``row`` failed ``check``."""
    name = check.check
    if name.endswith("present"):
        return (
            "label missing (image without label)"
            if name.startswith("label")
            else "image missing (orphan label)"
        )
    if name.endswith("readable"):
        kind = name.split()[0]
        return next((e for e in row["error"].split("; ") if e.startswith(kind)), f"{kind} unreadable")
    if name.startswith("image width") or name.startswith("image height"):
        return (
            f"image {row['image_width']}x{row['image_height']} but label "
            f"{row['label_width']}x{row['label_height']} ({row['label']})"
        )
    if name.startswith("label ids in 0.."):
        top = int(name.rsplit("..", 1)[1])
        bad = [v for v in str(row["label_values"]).split() if not (v.isdigit() and int(v) <= top)]
        return f"label ids outside 0..{top}: {' '.join(bad)}"
    if name == "image is RGB(A)":
        return f"image mode {row['image_mode']}, expected RGB or RGBA"
    if name == "label mode P or L":
        return f"label mode {row['label_mode']}, expected P (GTA5 palette) or L (8-bit)"
    if name == FORMATS["synthia"].label_mode_check:
        return f"label is a {row['label_mode']} PNG, expected 16-bit (SYNTHIA GT/LABELS)"
    if name == "unique image paths":
        return "image listed more than once"
    if name == "known splits":
        return f"unexpected split {row['split']!r}"
    return f"failed `{name}`"


def _check_result(raw: Any) -> CheckResult:
    """Convert one GE expectation result into a :class:`CheckResult`."""
    config = raw.expectation_config
    meta, result = config.meta or {}, raw.result or {}
    rows = [int(i) for i in result.get("unexpected_index_list") or []]
    detail = ""
    if meta.get("side") == "table":
        detail = f"observed {result.get('observed_value')}, expected {config.kwargs.get('value')}"
    if raw.exception_info and raw.exception_info.get("raised_exception"):
        detail = f"expectation raised: {raw.exception_info.get('exception_message')}"
    failures = 0 if raw.success else max(len(rows), 1)
    return CheckResult(
        check=meta.get("check", config.type),
        success=bool(raw.success),
        failures=failures,
        rows=rows,
        side=meta.get("side", "image"),
        fix=meta.get("fix", FIX_ROOT),
        detail=detail,
        warning=str(getattr(config, "severity", "critical")).lower().endswith("warning"),
    )


def run_suite(manifest: pd.DataFrame, suite: gx.ExpectationSuite) -> ExpectationSuiteValidationResult:
    """Validate ``manifest`` against ``suite`` in a fresh ephemeral GE context (no files, no bars)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    tag = uuid.uuid4().hex[:8]
    batch = (
        context.data_sources.add_pandas(f"manifest-{tag}")
        .add_dataframe_asset(f"rows-{tag}")
        .add_batch_definition_whole_dataframe(f"all-{tag}")
    )
    definition = gx.ValidationDefinition(name=f"validate-{tag}", data=batch, suite=context.suites.add(suite))
    definition = context.validation_definitions.add(definition)
    return definition.run(batch_parameters={"dataframe": ge_frame(manifest)}, result_format="COMPLETE")


def skip_bad_pairs(checks: list[CheckResult], rows: int, max_bad_fraction: float) -> list[CheckResult]:
    """``data.on_bad_pair: skip``: mark every failed per-pair check as skipped, and add the check that
    fails the dataset when the dropped pairs are more than ``max_bad_fraction`` of its ``rows``."""
    for check in checks:
        if check.side != "table" and check.check not in UNSKIPPABLE and not check.warning:
            check.skipped = not check.success
    dropped = len({index for check in checks if check.skipped for index in check.rows})
    allowed = int(max_bad_fraction * rows)  # floor: the fraction is a ceiling, never rounded up
    return [
        *checks,
        CheckResult(
            check=BAD_FRACTION_CHECK,
            success=dropped <= allowed,
            failures=0 if dropped <= allowed else 1,
            rows=[],
            side="table",
            fix=FIX_BAD_FRACTION,
            detail=f"dropped {dropped} of {rows} pairs, at most {allowed} allowed ({max_bad_fraction:g})",
        ),
    ]


def validate_dataset(
    name: str,
    fmt: str,
    root: str | Path,
    manifest: pd.DataFrame,
    expected: dict[str, int],
    known_defects: bool = False,
    max_bad_fraction: float | None = None,
) -> DatasetResult:
    """Run the suite on one manifest.

    Args:
        name: ``"source"`` or ``"target"`` (used in reports and file names).
        fmt: Dataset layout of the manifest.
        root: Dataset root the manifest was built from.
        manifest: Output of :func:`~dacs_uda.data.manifest.build_manifest`.
        expected: Split -> expected number of rows.
        known_defects: Real data: the format's reported problems only warn (see :func:`build_suite`).
        max_bad_fraction: None (``data.on_bad_pair: fail``): every failed check is fatal. A share of
            the rows (``skip``): pairs failing a per-pair check are dropped (:func:`skip_bad_pairs`).

    Returns:
        The per-check outcome, in suite order.
    """
    suite = build_suite(f"{name}-{fmt}", expected, fmt, known_defects)
    order = [_check_name(e) for e in suite.expectations]
    outcome = run_suite(manifest, suite)
    checks = sorted((_check_result(r) for r in outcome.results), key=lambda c: order.index(c.check))
    if max_bad_fraction is not None:
        checks = skip_bad_pairs(checks, len(manifest), max_bad_fraction)
    return DatasetResult(name, fmt, str(root), manifest, dict(expected), checks)


def validate_data(data: DataConfig) -> list[DatasetResult]:
    """Build the manifest of each domain (``data.io_workers`` processes) and validate it.

    Args:
        data: The ``data`` section of the params.

    Returns:
        One result per domain ("source", "target").
    """
    results = []
    workers = io_processes(data.io_workers)
    skip = data.max_bad_fraction if data.on_bad_pair == "skip" else None
    for name in DOMAINS:
        domain: DomainConfig = getattr(data, name)
        manifest = build_manifest(domain.format, Path(domain.root), workers)
        expected = expected_counts(data, name)
        real = data.pair != "embedded"
        results.append(validate_dataset(name, domain.format, domain.root, manifest, expected, real, skip))
    return results


def validated_data_version(results: list[DatasetResult]) -> str:
    """The data version of the rows the manifests keep (those training uses); ``unknown`` if not known.

    A kept row without a content hash makes it ``unknown`` with a warning, rather than stop the report.
    """
    try:
        return data_version({r.name: r.passed_rows() for r in results})
    except ValueError as err:
        log.warning("data_version unknown: %s", err)
        return UNKNOWN


def quiet_great_expectations() -> None:
    """Raise GE's loggers to WARNING: its INFO lines (temporary docs folders, ...) are internals.

    Some GE modules set their own logger level, so the parent logger alone is not enough.
    """
    for name in ["great_expectations", *logging.root.manager.loggerDict]:
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)
