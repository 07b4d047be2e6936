"""The ``dacs-uda`` command line.

``dacs-uda predict IMAGES_OR_FOLDERS --model models/dacs.onnx --out DIR`` segments images with an
exported ONNX model (ONNX Runtime, CUDA when available, no PyTorch); ``dacs-uda info MODEL`` prints
what the model file says about itself; ``dacs-uda plan -S experiment=dacs_gta5`` is the dry run of an
experiment (resolved params, stages, missing inputs, projected wall time). Exit codes: 0 every image
done, 1 some images failed (the others are still written), 2 nothing could run (bad arguments, missing
or unreadable model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dacs_uda import __version__
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger("dacs_uda.cli")

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2


def parse_resize(value: str) -> str | tuple[int, int]:
    """``auto``, ``none`` or ``WxH`` (e.g. ``1024x512``)."""
    if value in ("auto", "none"):
        return value
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, none or WxH (e.g. 1024x512), got {value!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {value!r}")
    return width, height


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def alpha_value(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from dacs_uda.inference import DEFAULT_MAX_PIXELS, PROVIDER_CHOICES

    parser = argparse.ArgumentParser(
        prog="dacs-uda", description="DACS semantic segmentation with an exported ONNX model."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="segment images and folders with an exported ONNX model",
        description="Segment images (files, or folders searched recursively for .png/.jpg/.jpeg) and "
        "write <name>_labels.png, <name>_color.png and <name>_overlay.png per image to --out.",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS")
    predict.add_argument("--model", default="models/dacs.onnx", help="ONNX file (default: %(default)s)")
    predict.add_argument("--out", required=True, type=Path, help="output folder (created)")
    predict.add_argument(
        "--ids",
        choices=("train", "cityscapes"),
        default="train",
        help="label PNG values: training ids 0-18 (default) or Cityscapes label ids (as in gtFine)",
    )
    predict.add_argument(
        "--resize",
        type=parse_resize,
        default="auto",
        help="size the model runs at: auto (scale to the height the model was evaluated at, keeping "
        "the aspect ratio; default), none (the image's own size) or WxH; outputs are at the image size",
    )
    predict.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images with an error (default: %(default)s)",
    )
    predict.add_argument(
        "--provider",
        choices=tuple(PROVIDER_CHOICES),
        default="auto",
        help="ONNX Runtime provider: auto (CUDA if available, else CPU; default), cpu or cuda",
    )
    predict.add_argument("--alpha", type=alpha_value, default=0.5, help="overlay opacity (default 0.5)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(run=run_predict)

    info = commands.add_parser(
        "info", help="print an ONNX model's metadata (classes, normalisation, lineage)"
    )
    info.add_argument("model")
    info.set_defaults(run=run_info)

    plan = commands.add_parser(
        "plan",
        help="dry run of an experiment: resolved params, stages, missing inputs, projected time",
        description="Compose the params as `dvc exp run -S ...` would (nothing is written), list the "
        "stages it runs and the inputs still missing, and project each training stage's wall time from "
        "a few real steps measured on this machine.",
    )
    plan.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a Hydra override, as for `dvc exp run -S` (experiment=dacs_gta5, seed=1)",
    )
    plan.add_argument(
        "--steps", type=positive_int, default=2, help="timed steps per training stage (after one warm-up)"
    )
    plan.add_argument("--no-measure", action="store_true", help="do not time any step (no projection)")
    plan.set_defaults(run=run_plan)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    from dacs_uda.inference import PROVIDER_CHOICES, OnnxSegmenter, segment_files

    try:
        segmenter = OnnxSegmenter(args.model, providers=PROVIDER_CHOICES[args.provider])
    except Exception as err:  # noqa: BLE001 - any failure to open the model ends the run the same way
        log.error("cannot use the model %s: %s", args.model, err)
        return EXIT_UNUSABLE
    report = segment_files(
        args.inputs,
        segmenter,
        args.out,
        ids=args.ids,
        resize=args.resize,
        max_pixels=args.max_pixels,
        alpha=args.alpha,
        progress=not args.no_progress,
    )
    done, failed = len(report.written), len(report.failed)
    log.info(
        "%d image(s) segmented, %d failed, in %.1f s on %s -> %s",
        done, failed, report.seconds, report.provider, args.out,
    )  # fmt: skip
    if failed:
        for path, why in report.failed.items():
            log.warning("failed: %s (%s)", path, why)
        return EXIT_SOME_FAILED
    if not done:
        log.error("no images found in %s", " ".join(args.inputs))
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    from dacs_uda.inference import CPU_PROVIDER, OnnxSegmenter

    try:
        segmenter = OnnxSegmenter(args.model, providers=[CPU_PROVIDER])
    except Exception as err:  # noqa: BLE001
        log.error("cannot read the model %s: %s", args.model, err)
        return EXIT_UNUSABLE
    meta = {key: _maybe_json(value) for key, value in sorted(segmenter.metadata.items())}
    print(json.dumps(meta, indent=2))
    return EXIT_OK


def run_plan(args: argparse.Namespace) -> int:
    from dacs_uda import plan
    from dacs_uda.config import ConfigError, compose_params
    from dacs_uda.utils.device import pick_device

    try:
        params = compose_params(args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_UNUSABLE
    device = pick_device()
    projections = []
    for section in [] if args.no_measure else params.runs:
        log.info("timing %d steps of train@%s on %s", args.steps + 1, section, device)
        seconds = plan.measure_step_seconds(params, section, device, args.steps)
        projections.append(
            plan.Projection(f"train@{section}", getattr(params, section).optim.iterations, seconds)
        )
    print(plan.render(params, args.overrides, projections, str(device)))
    return EXIT_OK


def _maybe_json(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
