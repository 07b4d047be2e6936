"""What validation writes: the manifests (only when every dataset passed), the report and the metrics.

* ``<manifests>/<domain>.csv``: the rows training may use (:meth:`DatasetResult.passed_rows`);
* the report (Markdown): every check of every dataset, the files that failed and how to fix them,
  the pairs ``data.on_bad_pair: skip`` dropped, the reported problems of the real data that only
  warn and what the pipeline does with each file, and the data version;
* the metrics (JSON, numbers only): rows per split, failures and warnings per check, pairs dropped by
  ``data.on_bad_pair: skip`` (the report names them), success. Lineage is not repeated here: it is
  recorded once per run, and in checkpoints and ONNX metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dacs_uda.data.formats import FORMATS
from dacs_uda.data.validate import DatasetResult
from dacs_uda.utils.io import write_json, write_text

MAX_REPORTED_FILES = 500  # report table rows; the count of all bad files is always given
# CheckResult.kind -> the check's result column, and the fix column of non-fatal outcomes.
STATUS = {"pass": "pass", "warning": "warning", "skipped": "skipped", "fatal": "**FAIL**"}
WARNING_FIX = "reported problem of the real data: see the warnings"
SKIPPED_FIX = "dropped (data.on_bad_pair: skip): see the skipped pairs"


def summarize(results: list[DatasetResult]) -> dict[str, Any]:
    """The metrics JSON: per dataset rows per split, failures per check, and overall success."""
    summary: dict[str, Any] = {"success": all(r.success for r in results)}
    for r in results:
        summary[r.name] = {
            "success": r.success,
            "rows": len(r.manifest),
            "rows_per_split": {
                str(k): int(v) for k, v in r.manifest["split"].value_counts().sort_index().items()
            },
            "expected_rows_per_split": r.expected,
            "bad_files": len(r.bad_files()),
            "warning_files": len(r.warning_files()),
            "manifest_rows": len(r.passed_rows()) if r.success else 0,
            "failures": {c.check: c.failures if c.fatal else 0 for c in r.checks},
            "warnings": {c.check: c.failures for c in r.checks if c.warning},
            "skipped_pairs": len(r.skipped_rows()),
        }
    return summary


def _md_cell(text: str) -> str:
    """Escape a table cell for Markdown."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _report_dataset(r: DatasetResult) -> list[str]:
    """Markdown section of one dataset: its checks, then its bad files."""
    counts = (
        ", ".join(f"{k}: {v}" for k, v in r.manifest["split"].value_counts().sort_index().items()) or "none"
    )
    lines = [
        f"## {r.name} ({r.fmt}, `{r.root}`): {'PASS' if r.success else 'FAIL'}",
        "",
        f"Rows per split: {counts} (expected: {', '.join(f'{k}: {v}' for k, v in r.expected.items())})."
        + _skipped_note(r),
        "",
        "| expectation | result | failures | detail | how to fix |",
        "|---|---|---|---|---|",
    ]
    for c in r.checks:
        status = STATUS[c.kind]
        fix = {"pass": "", "warning": WARNING_FIX, "skipped": SKIPPED_FIX}.get(c.kind, c.fix)
        lines.append(
            f"| {_md_cell(c.check)} | {status} | {c.failures} | {_md_cell(c.detail)} | {_md_cell(fix)} |"
        )
    bad = r.bad_files()
    lines += _file_table(f"Bad files ({len(bad)})", "", "how to fix", bad)
    lines += _file_table(
        f"Skipped pairs ({len(r.skipped_rows())}, data.on_bad_pair: skip)",
        "Dropped from the manifest: training never sees them. Each is named by its bad file.",
        "outcome",
        r.skipped_files(),
    )
    lines += _file_table(
        f"Warnings: reported problems of the {FORMATS[r.fmt].title} data ({_files_count(r.warning_files())})",
        "Not fatal. Each file is listed with what the pipeline does with it.",
        "outcome",
        r.warning_files(),
    )
    return lines + [""]


def _skipped_note(r: DatasetResult) -> str:
    """How many pairs ``skip`` dropped and how many the manifest keeps ("" when none was dropped)."""
    dropped = len(r.skipped_rows())
    if not dropped:
        return ""
    kept = len(r.passed_rows())
    return f" The counts include {dropped} skipped pair{'s' if dropped != 1 else ''}; {kept} rows are kept."


def _files_count(files: list[tuple[str, str, str]]) -> str:
    return f"{len(files)} file{'s' if len(files) != 1 else ''}"


def _file_table(title: str, note: str, last: str, files: list[tuple[str, str, str]]) -> list[str]:
    """A report section listing (file, problem, ``last``) rows, up to :data:`MAX_REPORTED_FILES`."""
    if not files:
        return []
    lines = ["", f"### {title}", ""] + ([note, ""] if note else [])
    lines += [f"| file | problem | {last} |", "|---|---|---|"]
    lines += [
        f"| `{_md_cell(f)}` | {_md_cell(p)} | {_md_cell(x)} |" for f, p, x in files[:MAX_REPORTED_FILES]
    ]
    if len(files) > MAX_REPORTED_FILES:
        lines.append(f"\n... and {len(files) - MAX_REPORTED_FILES} more.")
    return lines


def render_report(
    results: list[DatasetResult], manifests_dir: str | Path, data_version: str | None = None
) -> str:
    """The human-readable validation report (Markdown); with ``data_version``, it states it."""
    ok = all(r.success for r in results)
    verdict = (
        f"PASS: manifests written to `{manifests_dir}`."
        if ok
        else f"FAIL: no manifest written to `{manifests_dir}`; fix the problems below, then `dvc repro`."
    )
    lines = ["# Dataset validation", "", verdict, ""]
    if data_version is not None:
        lines += [f"Data version (content hash of the rows kept): `{data_version}`.", ""]
    for r in results:
        lines += _report_dataset(r)
    return "\n".join(lines)


def write_manifests(results: list[DatasetResult], manifests_dir: str | Path) -> None:
    """Write ``<name>.csv`` for every dataset, each atomically; rendered first so no write is half done."""
    texts = {r.name: r.passed_rows().to_csv(index=False) for r in results}
    for name, text in texts.items():
        write_text(Path(manifests_dir) / f"{name}.csv", text)


def failure_message(results: list[DatasetResult], report: Path, limit: int = 20) -> str:
    """One log line naming the first ``limit`` bad files, table-level failures, and the report."""
    bad = [f"{r.name}: {f} ({p})" for r in results for f, p, _ in r.bad_files()]
    tables = [
        f"{r.name}: {c.check} ({c.detail})"
        for r in results
        for c in r.checks
        if c.side == "table" and c.fatal
    ]
    more = f" ... and {len(bad) - limit} more" if len(bad) > limit else ""
    parts = [f"{len(bad)} bad files: " + "; ".join(bad[:limit]) + more] if bad else []
    parts += tables
    return "dataset validation failed: " + " | ".join(parts) + f". See {report}"


def write_outputs(
    results: list[DatasetResult],
    manifests_dir: str | Path,
    report: str | Path,
    metrics: str | Path,
    data_version: str | None = None,
) -> bool:
    """Write the report and the metrics always, the manifests only if every dataset passed.

    Args:
        results: One per domain (:func:`~dacs_uda.data.validate.validate_data`).
        manifests_dir: Folder of the manifests (``data.manifests``).
        report: The Markdown report's path.
        metrics: The metrics file's path.
        data_version: Stated in the report (:func:`~dacs_uda.data.validate.validated_data_version`).

    Returns:
        Whether every dataset passed.
    """
    ok = all(r.success for r in results)
    if ok:
        write_manifests(results, manifests_dir)
    write_text(report, render_report(results, manifests_dir, data_version))
    write_json(metrics, summarize(results))
    return ok
