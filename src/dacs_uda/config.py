"""Typed, validated view of ``params.yaml``: types, bounds and checks, and no defaults.

The defaults live in one place, ``conf/`` (Hydra groups), which DVC composes into ``params.yaml``.
Every stage calls :func:`load_params` first: missing and unknown keys, wrong types and out-of-range
values are rejected with a message that names the key, before any work starts.
:func:`compose_params` gives the composed defaults (with overrides) without writing a file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dacs_uda.labels import NUM_CLASSES

PARAMS_FILE = Path("params.yaml")
# The defaults, and the only place they live: Hydra composes them into params.yaml (dvc exp run).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

DOMAINS = ("source", "target")

SOURCE_FORMATS = ("gta5", "synthia")
TARGET_FORMATS = ("cityscapes",)
# data.pair -> (source format, target format). "embedded" is the generated pair in the GTA5 and
# Cityscapes layouts; the others are the real benchmarks (docs/datasets.md).
PAIR_FORMATS = {
    "embedded": ("gta5", "cityscapes"),
    "gta5_cityscapes": ("gta5", "cityscapes"),
    "synthia_cityscapes": ("synthia", "cityscapes"),
}
DATA_PAIRS = tuple(PAIR_FORMATS)
# data.on_bad_pair: stop on any corrupt or incomplete pair, or drop it (up to data.max_bad_fraction).
BAD_PAIR_ACTIONS = ("fail", "skip")
# Baselines and ablations of the paper (Tranheden et al., Table 2-4) beside DACS itself.
METHODS = ("dacs", "source_only", "classmix", "pseudo_label", "dist_align", "cutmix")
FIDELITY = ("clean", "official")
DA_PRIORS = ("target_labels", "source_labels")
ARCHS = ("deeplabv2",)
MODEL_INITS = ("scratch", "imagenet", "file")
ADAPT_INITS = ("pretrained", "model")
TRAIN_SECTIONS = ("pretrain", "oracle", "adapt")
# What a model built without a weights file depends on (runs.<section>.start): the code that builds it.
MODEL_CODE = "src/dacs_uda/models"
METRICS_DIR = "metrics"  # the training stages' curves and metrics (dvc.yaml: metrics/<section>*)
ASPP_SUMS = ("all", "first_two")
# ResNet depths that torchvision publishes ImageNet weights for (model.init: imagenet needs width 64).
IMAGENET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
EVAL_PROTOCOLS = ("official", "full")
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """``params.yaml`` does not describe a valid run."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"params.yaml: `{key}` {message}")


def _check_size(value: list[int], key: str) -> None:
    _check(len(value) == 2 and all(v > 0 for v in value), key, f"must be two positive integers, got {value}")


@dataclass
class EmbeddedConfig:
    """The generated street-scene benchmark (see ``dacs_uda.data.synth``)."""

    seed: int
    n_source: int
    n_target_train: int
    n_target_val: int
    source_size: list[int]  # W, H as written to disk
    target_size: list[int]  # W, H as written to disk

    def __post_init__(self) -> None:
        for key in ("n_source", "n_target_train", "n_target_val"):
            _check(getattr(self, key) >= 1, f"data.embedded.{key}", "must be >= 1")
        _check_size(self.source_size, "data.embedded.source_size")
        _check_size(self.target_size, "data.embedded.target_size")


@dataclass
class DomainConfig:
    """Where one domain lives on disk, in which official layout, and how it is resized on load."""

    format: str
    root: str
    resize: list[int]  # W, H (official DACS: GTA5 1280x720, Cityscapes 1024x512; SYNTHIA has none)
    # Real data only: expected pairs per split; None = the official counts (GTA5 24,966, SYNTHIA 9,400,
    # Cityscapes 2,975 train + 500 val). Set it only for a deliberate subset.
    counts: dict[str, int] | None


@dataclass
class DataConfig:
    pair: str
    source: DomainConfig
    target: DomainConfig
    crop: list[int]  # H, W (official: 512x512)
    manifests: str  # validated manifests of the raw data (stage validate)
    prepared: str  # resized cache + the manifests training reads (stage prepare)
    download: bool  # real pairs: download missing datasets (else only locate them)
    downloads: str  # where archives are downloaded to (resumable)
    checksums: str | None  # optional file of pinned archive checksums (`sha256sum` format)
    # loader processes, -1 auto (with a GPU one per free core, on the CPU none); every crop is drawn
    # from a keyed stream, so the count never changes a result
    num_workers: int
    io_workers: int  # processes of validate and prepare (0: one per core); results do not change
    on_bad_pair: str  # fail | skip: what validation does with a corrupt or incomplete pair
    max_bad_fraction: float  # skip: the share of pairs that may be dropped before validation fails
    embedded: EmbeddedConfig

    def __post_init__(self) -> None:
        _check(self.pair in DATA_PAIRS, "data.pair", f"must be one of {DATA_PAIRS}, got {self.pair!r}")
        _check(self.num_workers >= -1, "data.num_workers", "must be >= 0, or -1 (auto)")
        _check(self.source.format in SOURCE_FORMATS, "data.source.format", f"must be one of {SOURCE_FORMATS}")
        _check(self.target.format in TARGET_FORMATS, "data.target.format", f"must be one of {TARGET_FORMATS}")
        for domain, fmt in zip(("source", "target"), PAIR_FORMATS[self.pair], strict=True):
            _check(
                getattr(self, domain).format == fmt,
                f"data.{domain}.format",
                f"must be {fmt!r} for data.pair {self.pair!r}, got {getattr(self, domain).format!r}",
            )
            counts = getattr(self, domain).counts
            _check(
                counts is None or (len(counts) > 0 and all(v >= 1 for v in counts.values())),
                f"data.{domain}.counts",
                f"must be null (official counts) or split -> count >= 1, got {counts}",
            )
        _check_size(self.source.resize, "data.source.resize")
        _check_size(self.target.resize, "data.target.resize")
        _check_size(self.crop, "data.crop")
        _check(
            self.io_workers >= 0, "data.io_workers", f"must be >= 0 (0: one per core), got {self.io_workers}"
        )
        _check(
            self.on_bad_pair in BAD_PAIR_ACTIONS,
            "data.on_bad_pair",
            f"must be one of {BAD_PAIR_ACTIONS}, got {self.on_bad_pair!r}",
        )
        _check(
            0.0 <= self.max_bad_fraction < 1.0,
            "data.max_bad_fraction",
            f"must be in [0, 1) (a share of the pairs, e.g. 0.001), got {self.max_bad_fraction}",
        )
        for domain in ("source", "target"):
            w, h = getattr(self, domain).resize
            _check(
                self.crop[0] <= h and self.crop[1] <= w,
                "data.crop",
                f"{self.crop} (H, W) does not fit inside data.{domain}.resize {[w, h]} (W, H)",
            )


@dataclass
class ModelConfig:
    """DeepLab-v2 family: ResNet backbone (output stride 8) + ASPP classifier."""

    arch: str
    depths: list[int]  # ResNet-101: [3, 4, 23, 3]
    width: int  # stem channels; ResNet-101: 64
    aspp_dilations: list[int]
    num_classes: int
    freeze_bn_affine: bool  # DeepLab-v2 keeps BN scale/shift fixed
    # all: the ASPP output is the sum of every branch; first_two: only the first two branches (d6 + d12),
    # as the official Classifier_Module, which returns inside its loop (the others get no gradient).
    aspp_sum: str
    # scratch: random init; imagenet: torchvision ImageNet weights (downloaded, or the local copy at
    # `weights`); file: the weights file at `weights` (DeepLab COCO layout, torchvision layout or ours).
    init: str
    weights: str | None

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, "model.arch", f"must be one of {ARCHS}, got {self.arch!r}")
        _check(len(self.depths) == 4 and min(self.depths) >= 1, "model.depths", "must be four integers >= 1")
        _check(self.width >= 4, "model.width", "must be >= 4")
        _check(len(self.aspp_dilations) >= 1, "model.aspp_dilations", "must not be empty")
        _check(self.num_classes >= 2, "model.num_classes", "must be >= 2")
        _check(
            self.aspp_sum in ASPP_SUMS, "model.aspp_sum", f"must be one of {ASPP_SUMS}, got {self.aspp_sum!r}"
        )
        _check(
            self.aspp_sum == "all" or len(self.aspp_dilations) >= 2,
            "model.aspp_sum",
            "first_two needs at least two model.aspp_dilations",
        )
        _check(self.init in MODEL_INITS, "model.init", f"must be one of {MODEL_INITS}, got {self.init!r}")
        if self.init == "scratch":
            _check(self.weights is None, "model.weights", "must be null when model.init is scratch")
        if self.init == "file":
            _check(bool(self.weights), "model.weights", "must name a weights file when model.init is file")
        if self.init == "imagenet":
            _check(
                self.width == 64 and tuple(self.depths) in IMAGENET_DEPTHS,
                "model.init",
                "imagenet needs a torchvision ResNet shape: model.width 64 and model.depths one of "
                f"{[list(d) for d in IMAGENET_DEPTHS]}, got width {self.width}, depths {self.depths}",
            )


@dataclass
class OptimConfig:
    """SGD with poly decay, classifier at ``head_lr_mult`` times the backbone rate (as in DACS)."""

    iterations: int
    batch_size: int
    lr: float
    head_lr_mult: float
    momentum: float
    weight_decay: float
    poly_power: float
    # true: the official optimiser (§3.3): each backbone conv weight is updated once per time the official
    # parameter generator lists it (stem 1, bottleneck convs 3, downsample convs 4), sequentially with
    # one momentum buffer; false: one update per parameter (clean).
    duplicate_backbone_updates: bool
    # linear warm-up over the first steps (DAFormer: 1500 of 40k, from 1e-6 of the lr); 0: none
    warmup_iters: int

    def _validate(self, section: str) -> None:
        _check(self.iterations >= 1, f"{section}.optim.iterations", "must be >= 1")
        _check(self.batch_size >= 1, f"{section}.optim.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{section}.optim.lr", "must be > 0")
        _check(self.head_lr_mult > 0, f"{section}.optim.head_lr_mult", "must be > 0")
        _check(0 <= self.momentum < 1, f"{section}.optim.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{section}.optim.weight_decay", "must be >= 0")
        _check(self.poly_power >= 0, f"{section}.optim.poly_power", "must be >= 0")
        _check(
            0 <= self.warmup_iters <= self.iterations,
            f"{section}.optim.warmup_iters",
            f"must be in [0, {section}.optim.iterations = {self.iterations}] (0: no warm-up), "
            f"got {self.warmup_iters}",
        )


@dataclass
class LoopConfig:
    """How the training loop runs (every training stage): precision, memory format, resume checkpoints."""

    # fp32 | bf16 | fp16: autocast of the student's and the teacher's forward passes (fp16 adds a grad
    # scaler); the weights and the optimiser stay in float32.
    precision: str
    channels_last: bool  # NHWC memory format for models and images (tensor-core GPUs)
    compile: bool  # torch.compile the student and the teacher
    # Several processes (torchrun): BatchNorm with the statistics of the global batch, as one process
    # holding it would compute them (1 crop per GPU otherwise normalises each crop with its own).
    sync_bn: bool
    checkpoint_every: int  # steps between resume checkpoints (0: only the final state)
    checkpoint_dir: str  # <section>.pt: the final checkpoint of each training stage
    resume_dir: str  # one resume checkpoint per training stage; a rerun continues from it

    def __post_init__(self) -> None:
        _check(
            self.precision in PRECISIONS,
            "train.precision",
            f"must be one of {PRECISIONS}, got {self.precision!r}",
        )
        _check(
            self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: no periodic checkpoint)"
        )


def _check_validation(eval_every: int, eval_images: int, section: str) -> None:
    _check(eval_every >= 0, f"{section}.eval_every", "must be >= 0 (0: no validation during training)")
    _check(eval_images >= 0, f"{section}.eval_images", "must be >= 0 (0: every target-val image)")


@dataclass
class TrainConfig:
    """Supervised training on one domain: source pre-training, or the target oracle."""

    domain: str
    optim: OptimConfig
    log_every: int
    eval_every: int  # steps between target-val validations (0: none)
    eval_images: int  # target-val images each validation scores (0: all)

    def validate(self, section: str) -> None:
        _check(self.domain in ("source", "target"), f"{section}.domain", "must be 'source' or 'target'")
        _check(self.log_every >= 1, f"{section}.log_every", "must be >= 1")
        _check_validation(self.eval_every, self.eval_images, section)
        self.optim._validate(section)


@dataclass
class MicConfig:
    """Masked image consistency (MIC, Hoyer et al. CVPR 2023; ``dacs_uda.dacs.mic``).

    The student also sees each target crop with random square blocks hidden and learns the teacher's
    pseudo-labels of the whole crop there, weighted by lambda like the mixed loss.
    """

    enabled: bool
    block_size: int  # side of a square block in pixels (MIC: 64 at full resolution, 32 at half)
    mask_ratio: float  # probability that a block is hidden (MIC: 0.7)
    weight: float  # lambda_MIC, the masked loss's weight in the step's loss (MIC: 1)
    # colour jitter + blur (adapt.jitter_*, adapt.blur_*) on the target crop before the mask, as MIC's
    # `separatetrgaug`; false: the masked crop is otherwise unaugmented (MIC's `separatetrg`)
    augment: bool

    def _validate(self, method: str) -> None:
        _check(self.block_size >= 1, "adapt.mic.block_size", "must be >= 1 (pixels)")
        _check(0 <= self.mask_ratio <= 1, "adapt.mic.mask_ratio", "must be a probability in [0, 1]")
        _check(self.weight >= 0, "adapt.mic.weight", "must be >= 0")
        _check(
            not (self.enabled and method == "source_only"),
            "adapt.mic.enabled",
            "needs a teacher's pseudo-labels: set it false with adapt.method source_only",
        )


@dataclass
class RcsConfig:
    """Rare Class Sampling of the adaptation's source crops (DAFormer, Hoyer et al. CVPR 2022;
    ``dacs_uda.data.rcs``): a class drawn with P(c) = softmax((1 - f_c) / T), then a frame holding
    more than ``min_pixels`` of it, then a crop holding enough of it."""

    enabled: bool
    temperature: float  # T (DAFormer: 0.01); lower draws the rarest classes more often
    min_pixels: int  # a frame counts for class c with more than this many pixels of c, at the prepared size
    min_crop_ratio: float  # a crop must hold more than min_crop_ratio * min_pixels pixels of c
    max_crop_tries: int  # crops drawn at most to meet min_crop_ratio (1: the first crop, no check)

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "adapt.rcs.temperature", "must be > 0")
        _check(self.min_pixels >= 0, "adapt.rcs.min_pixels", "must be >= 0")
        _check(self.min_crop_ratio >= 0, "adapt.rcs.min_crop_ratio", "must be >= 0")
        _check(self.max_crop_tries >= 1, "adapt.rcs.max_crop_tries", "must be >= 1")


@dataclass
class FdConfig:
    """Thing-class feature distance (DAFormer, Hoyer et al. CVPR 2022; ``dacs_uda.dacs.fd``): the student's
    bottleneck features on the source crops kept near a frozen copy of the model adaptation starts from,
    on the pixels whose downscaled source label is a thing class."""

    enabled: bool
    weight: float  # lambda_FD (DAFormer: 0.005)
    classes: list[int]  # training ids (DAFormer: 6, 7, 11-18: lights, signs, people, vehicles)
    # a feature pixel takes its window's majority label only when that label covers at least this share
    # of the window (DAFormer: 0.75), else it is left out
    scale_min_ratio: float

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "adapt.fd.weight", f"must be >= 0, got {self.weight}")
        _check(
            len(self.classes) > 0
            and len(set(self.classes)) == len(self.classes)
            and all(0 <= c < NUM_CLASSES for c in self.classes),
            "adapt.fd.classes",
            f"must be distinct training ids in [0, {NUM_CLASSES}), got {self.classes}",
        )
        _check(0 < self.scale_min_ratio <= 1, "adapt.fd.scale_min_ratio", "must be in (0, 1]")


@dataclass
class AdaptConfig:
    """DACS adaptation (paper constants as defaults)."""

    method: str
    # pretrained: the pretrain stage's checkpoint; model: a fresh model as `model.init` builds it (scratch,
    # ImageNet, or the COCO DeepLab file, which is where the official code starts DACS).
    init: str
    # official: ignore label pickable by the class mask, teacher BN in train mode (target-batch
    # statistics, parameters-only EMA), one jitter/blur decision per batch; clean fixes all three.
    fidelity: str
    optim: OptimConfig
    ema_alpha: float
    pseudo_threshold: float
    mix_weight: float
    jitter_p: float
    jitter_strength: float
    blur_p: float
    blur_sigma: list[float]
    cutmix_area: float  # method cutmix: fraction of the target covered by the source box
    da_prior: str
    da_momentum: float  # method dist_align: running mean of teacher predictions
    fd: FdConfig  # thing-class feature distance to the initial model (off: none)
    log_every: int
    eval_every: int  # steps between target-val validations of student and teacher (0: none)
    eval_images: int  # target-val images each validation scores (0: all)
    mic: MicConfig
    rcs: RcsConfig  # source crops by rare class sampling (off: DACS's uniform frames and crops)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "adapt.method", f"must be one of {METHODS}, got {self.method!r}")
        _check(self.init in ADAPT_INITS, "adapt.init", f"must be one of {ADAPT_INITS}, got {self.init!r}")
        _check(
            self.fidelity in FIDELITY, "adapt.fidelity", f"must be one of {FIDELITY}, got {self.fidelity!r}"
        )
        _check(
            self.da_prior in DA_PRIORS, "adapt.da_prior", f"must be one of {DA_PRIORS}, got {self.da_prior!r}"
        )
        _check(0 <= self.da_momentum < 1, "adapt.da_momentum", "must be in [0, 1)")
        _check(0 < self.cutmix_area < 1, "adapt.cutmix_area", "must be in (0, 1)")
        _check(0 <= self.ema_alpha < 1, "adapt.ema_alpha", "must be in [0, 1)")
        _check(0 <= self.pseudo_threshold <= 1, "adapt.pseudo_threshold", "must be in [0, 1]")
        _check(self.mix_weight >= 0, "adapt.mix_weight", "must be >= 0")
        for key in ("jitter_p", "blur_p"):
            _check(0 <= getattr(self, key) <= 1, f"adapt.{key}", "must be a probability in [0, 1]")
        _check(0 <= self.jitter_strength <= 1, "adapt.jitter_strength", "must be in [0, 1]")
        lo, hi = (self.blur_sigma + [0, 0])[:2]
        _check(
            len(self.blur_sigma) == 2 and 0 < lo <= hi,
            "adapt.blur_sigma",
            "must be [low, high], 0 < low <= high",
        )
        _check(self.log_every >= 1, "adapt.log_every", "must be >= 1")
        _check_validation(self.eval_every, self.eval_images, "adapt")
        self.optim._validate("adapt")
        self.mic._validate(self.method)


@dataclass
class EvaluateConfig:
    batch_size: int
    models: dict[str, str]
    metrics: str
    lineage: str  # the run's lineage, written once per run (not into every metrics file)
    per_class: str
    samples_dir: str
    num_samples: int
    # official: labels nearest-resized to data.target.resize (DACS);
    # full: logits upsampled to the native label size (what the Cityscapes benchmark scores)
    protocol: str
    confusion: str
    predictions_dir: str  # Cityscapes-format label-id and colour PNGs, one folder per model
    save_predictions: list[str]  # names from `models`

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        _check(len(self.models) >= 1, "evaluate.models", "must name at least one checkpoint")
        _check(self.num_samples >= 0, "evaluate.num_samples", "must be >= 0")
        _check(
            self.protocol in EVAL_PROTOCOLS,
            "evaluate.protocol",
            f"must be one of {EVAL_PROTOCOLS}, got {self.protocol!r}",
        )
        unknown = sorted(set(self.save_predictions) - set(self.models))
        _check(not unknown, "evaluate.save_predictions", f"names models not in evaluate.models: {unknown}")


@dataclass
class ExportConfig:
    checkpoint: str
    onnx: str
    opset: int
    dynamo: bool
    parity_atol: float
    min_argmax_agreement: float
    metrics: str
    fp16_onnx: str  # float16 weights and arithmetic (GPU deployment)
    fp16_min_argmax_agreement: float
    max_miou_diff: float  # evaluate_onnx fails when |mIoU(ONNX) - mIoU(PyTorch)| exceeds this (points)
    eval_metrics: str

    def __post_init__(self) -> None:
        _check(7 <= self.opset <= 23, "export.opset", "must be in [7, 23]")
        _check(self.parity_atol > 0, "export.parity_atol", "must be > 0")
        _check(0 < self.min_argmax_agreement <= 1, "export.min_argmax_agreement", "must be in (0, 1]")
        _check(
            0 < self.fp16_min_argmax_agreement <= 1, "export.fp16_min_argmax_agreement", "must be in (0, 1]"
        )
        _check(self.max_miou_diff >= 0, "export.max_miou_diff", "must be >= 0")


@dataclass
class RunConfig:
    """One training stage of the experiment (``runs.<section>``)."""

    # The file the stage's model starts from, a DVC dependency of ``train@<section>``: another stage's
    # checkpoint, the ``model.weights`` file, or the model code (MODEL_CODE) for a model without a file.
    start: str


@dataclass
class Params:
    """The whole of ``params.yaml``."""

    seed: int
    deterministic: bool
    data: DataConfig
    model: ModelConfig
    train: LoopConfig
    runs: dict[str, RunConfig]
    pretrain: TrainConfig
    oracle: TrainConfig
    adapt: AdaptConfig
    evaluate: EvaluateConfig
    export: ExportConfig

    def __post_init__(self) -> None:
        self.pretrain.validate("pretrain")
        self.oracle.validate("oracle")
        _check_runs(self)


@dataclass(frozen=True)
class RunOutputs:
    """What the training stage ``train@<section>`` writes (the paths dvc.yaml declares for it)."""

    checkpoint: str  # model (and EMA teacher), read by evaluate and export
    curve: str  # the learning curve, one row per log_every steps
    validation: str  # target-val mIoU per eval_every steps
    metrics: str  # the latest values, read by `dvc exp show` while the stage runs


def checkpoint_path(params: Params, section: str) -> str:
    """Where the training stage ``section`` writes its final checkpoint (dvc.yaml: ``train@<section>``)."""
    return f"{params.train.checkpoint_dir}/{section}.pt"


def run_outputs(params: Params, section: str) -> RunOutputs:
    """The outputs of ``train@<section>``: its checkpoint in ``train.checkpoint_dir``, the rest in metrics."""
    metrics = f"{METRICS_DIR}/{section}"
    return RunOutputs(checkpoint_path(params, section), f"{metrics}_curve.csv", f"{metrics}_validation.csv",
                      f"{metrics}.json")  # fmt: skip


def accepted_starts(params: Params, section: str) -> tuple[str, ...]:
    """What ``runs.<section>.start`` may name, best first: the pretrain checkpoint that adaptation starts
    from (``adapt.init: pretrained``), else the ``model.weights`` file, or the model code (always a
    dependency; naming the weights file as well makes DVC rerun the stage when the file changes)."""
    if section == "adapt" and params.adapt.init == "pretrained":
        return (checkpoint_path(params, "pretrain"),)
    return (params.model.weights, MODEL_CODE) if params.model.weights else (MODEL_CODE,)


def _check_runs(params: Params) -> None:
    """``runs`` names training stages, each starting from the right file; every model evaluated or
    exported from the checkpoint folder is trained by one of them."""
    unknown = sorted(set(params.runs) - set(TRAIN_SECTIONS))
    _check(
        bool(params.runs) and not unknown, "runs", f"must name stages among {TRAIN_SECTIONS}, got {unknown}"
    )
    for section, run in params.runs.items():
        starts = accepted_starts(params, section)
        _check(
            run.start in starts,
            f"runs.{section}.start",
            f"must be one of {list(starts)}, what {section} starts from (adapt.init {params.adapt.init!r}, "
            f"model.weights {params.model.weights!r}), got {run.start!r}: "
            f"set -S runs.{section}.start={starts[0]}",
        )
    trained = {checkpoint_path(params, s): s for s in TRAIN_SECTIONS}
    used = {f"evaluate.models.{k}": v for k, v in params.evaluate.models.items()}
    for key, path in {**used, "export.checkpoint": params.export.checkpoint}.items():
        producer = trained.get(path)
        _check(
            producer is None or producer in params.runs,
            key,
            f"is {path!r}, the checkpoint of stage {producer!r}, which `runs` does not include",
        )


def _check_sections(raw: dict[str, Any], schema: type, prefix: str = "") -> None:
    """Sections must be mappings: OmegaConf's own error for ``adapt: 5`` does not name the key."""
    hints = get_type_hints(schema)
    for f in fields(schema):
        section = hints[f.name]
        if not is_dataclass(section) or raw.get(f.name) is None:
            continue
        key, value = f"{prefix}{f.name}", raw[f.name]
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: `{key}` must be a mapping, got {value!r}")
        _check_sections(value, section, f"{key}.")  # type: ignore[arg-type]


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping against the schema; raise :class:`ConfigError` naming the bad key.

    Every key must be present (the schema has no defaults: they live in ``conf/``), none may be unknown.
    """
    _check_sections(raw, Params)
    try:
        params = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Params), raw))
    except OmegaConfBaseException as err:
        # OmegaConf's message already names the full key and the expected type.
        raise ConfigError(f"params.yaml: {str(err).splitlines()[0]} (key: {err.full_key})") from None
    assert isinstance(params, Params)
    return params


def compose_params(overrides: list[str] | tuple[str, ...] = (), conf_dir: str | Path = CONF_DIR) -> Params:
    """The params that ``dvc exp run -S OVERRIDE ...`` would write, composed with Hydra from ``conf/``.

    Args:
        overrides: Hydra overrides (``method=cutmix``, ``adapt.optim.iterations=10``).
        conf_dir: The config folder (the repository's ``conf/`` by default).
    """
    from hydra import compose, initialize_config_dir  # only the callers that compose pay for Hydra

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        composed = compose(config_name="config", overrides=list(overrides))
    raw = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(raw, dict)
    return parse_params(raw)  # type: ignore[arg-type]


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the stages from the repository root (where dvc.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_params(raw)


def params_hash(params: Params) -> str:
    """Short, stable hash of the resolved params, recorded with every model and metric."""
    blob = json.dumps(asdict(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
