"""One typed configuration per stage, three profiles, and the notebook parameter check.

Every notebook has a ``parameters`` cell whose names are exactly the fields of its stage's
config. papermill, ``cxrlib run -p NAME VALUE`` and a Colab user all set
the same names; :func:`config_from_namespace` turns the notebook's variables into a config and
fails at once, listing the valid names, if a parameter is unknown or of the wrong type.

Profiles give the defaults; a parameter left at ``None`` takes them:

* ``smoke``: CI. The real DenseNet201 + Res-SE network at a tiny size, two steps per stage.
* ``demo``: a CPU run on the synthetic data that really learns, the chain in minutes.
* ``paper``: docs/method.md section 4 (sizes, epochs, batches, ImageNet weights) for a GPU and EGD-CXR.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cxrlib.paths import repository_root
from cxrlib.variants import VARIANTS, check_results_config

PROFILES = ("smoke", "demo", "paper")
DEFAULT_CAMS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")  # Score-CAM: on request (slow)


# Fields of the training loop. A notebook that trains nothing rejects them (``inapplicable``):
# ``lr`` on the data notebook is a mistake to report, not a setting to ignore.
_TRAINING_FIELDS = frozenset({"epochs", "batch_size", "lr", "plateau_patience", "early_stopping", "max_steps_per_epoch",
                              "amp", "amp_dtype", "channels_last", "compile", "activation_checkpointing",
                              "sync_batchnorm", "resume", "init_from", "frozen_bn", "reuse_frozen_features",
                              "shuffle", "drop_last"})
# A notebook that reads a trained model names its upstream stage in ``init_from`` (colab.start checks it).
_READS_A_MODEL = (_TRAINING_FIELDS - {"init_from"}) | {"pretrained"}
from cxrlib.runfolder import atomic_write_text, stage_lock
from cxrlib.validation import ParameterError, check_data_roots, check_ranges

# Fields that do not change a stage's weights: a resumed stage may differ in them.
NOT_WEIGHT_FIELDS = frozenset({
    "run_dir", "resume", "device", "num_workers", "eval_batch_size", "n_boot", "reuse_frozen_features",
    "sync_batchnorm", "deterministic", "channels_last", "compile", "activation_checkpointing",
    "examples_per_class", "max_images", "cam_methods", "eval_split", "kld_eps"})


@dataclass
class StageConfig:
    """Fields shared by every stage. ``None`` means "the profile's default"."""

    profile: str = "smoke"
    run_dir: str | None = None  # default: $CXRLIB_RUN_DIR, else <repository>/runs/<profile>
    egd_root: str | None = None  # None: the bundled synthetic data set
    image_root: str | None = None  # default: egd_root
    synthetic_images: int = 300
    data_seed: int = 0  # synthetic data and the split
    image_size: tuple = (320, 256)
    gaze_source: str = "eye_gaze"
    sigma: float = 75.5
    sigma_frac: float | None = None  # fraction of the native long side (wins); None: `sigma` in pixels
    weighting: str = "count"
    resize: str = "pad_resize"
    seed: int = 0
    device: str | None = None  # None: cuda, then mps, then cpu
    num_workers: int | None = None  # None: decode with every core; DataLoader workers on CUDA only
    densenet_arch: str = "densenet201"
    pretrained: bool | str = False
    base_width: int = 64
    epochs: int = 1
    batch_size: int = 2
    lr: float = 1e-4
    plateau_patience: int = 40
    early_stopping: int = 0  # epochs without improvement before stopping; 0: never
    max_steps_per_epoch: int | None = None
    amp: bool | None = None  # None: on for CUDA only
    amp_dtype: str = "auto"  # auto: bf16 on cards with native bf16 (compute capability >= 8.0), else fp16 + scaler
    channels_last: bool | None = None  # None: on CUDA only (faster convolutions there, slower on the CPU)
    compile: bool = False  # torch.compile the training step; falls back to eager with a warning
    activation_checkpointing: bool = False  # recompute UNet levels in the backward pass: less memory, slower
    sync_batchnorm: bool = False  # under torchrun on CUDA: BatchNorm statistics over all GPUs
    resume: bool = False
    init_from: str | None = None  # a stage name in run_dir, or a checkpoint path
    frozen_bn: str = "eval"  # "train" reproduces the paper code's BatchNorm drift
    reuse_frozen_features: bool = True
    eval_batch_size: int = 16
    n_boot: int = 1000
    # Fidelity switches (docs/reproduction-notes.md says which default reproduces what).
    synthetic_difficulty: float = 0.75  # 0: every class signature at full strength; 1: hardest
    intensity: str = "minmax"  # "max": divide by the maximum after the resize (the code)
    modality_lut: bool = True  # False: the raw pixel_array as stored (the code), no inversion
    eval_split: str = "test"  # "val": the code's protocol (optimistic: val also picked the checkpoint)
    shuffle: bool = True  # training batches in random order (the code's Module/ and baseline/: False)
    drop_last: bool = True  # drop the last partial training batch (the code keeps it)
    kld_eps: float = 2.2204e-16  # the KLD metric's eps (benchmark); 0: exact KL as F.kl_div (the code)
    deterministic: bool | None = None  # repeatable kernels; None: on for CPU, off for CUDA (speed)

    stage: typing.ClassVar[str] = "common"
    inapplicable: typing.ClassVar[frozenset] = frozenset()  # fields this stage does not read

    @property
    def stage_dir(self) -> Path:
        return Path(self.run_dir) / self.stage

    def to_dict(self) -> dict:
        return {"stage": self.stage, **asdict(self)}

    def save(self, path=None) -> Path:
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            return atomic_write_text(path, text)
        with stage_lock(self.stage_dir):  # not while another process trains this stage
            return atomic_write_text(self.stage_dir / "config.json", text)


@dataclass
class DataConfig(StageConfig):
    """Notebook 01: data exploration."""

    stage: typing.ClassVar[str] = "data"
    inapplicable: typing.ClassVar[frozenset] = _TRAINING_FIELDS | {
        "pretrained", "densenet_arch", "base_width", "device", "eval_batch_size", "n_boot", "eval_split", "kld_eps"}
    examples_per_class: int = 2


@dataclass
class ContrastiveConfig(StageConfig):
    """Stage 1a (notebook 02): contrastive pretraining of DenseNet201."""

    stage: typing.ClassVar[str] = "stage1a"
    loss: str = "triplet"  # triplet (paper code) | supcon | ntxent
    margin: float = 1.0
    temperature: float = 0.07
    triplet_feature: str = "map"  # map: unpooled denseblock4 (the code) | pooled: GAP(denseblock4)
    triplet_reduction: str = "sum"  # sum over triplets (the code) | mean


@dataclass
class EncoderConfig(StageConfig):
    """Stage 1b (notebook 03): DenseNet201 + Linear(1920 -> 3), cross-entropy."""

    stage: typing.ClassVar[str] = "stage1b"
    init_from: str | None = "stage1a"
    linear_probe: bool = False  # True: DenseNet frozen, only the Linear layer trains


@dataclass
class SaliencyConfig(StageConfig):
    """Stage 2 (notebook 04): Res-SE encoder, decoder and saliency head; DenseNet frozen."""

    stage: typing.ClassVar[str] = "stage2"
    init_from: str | None = "stage1b"


@dataclass
class FusionConfig(StageConfig):
    """Stage 3 (notebook 05): the fusion classifier, then (``mode="finetune"``) every part for
    ``finetune_epochs`` with the joint stage's uncertainty-weighted CE + KL."""

    stage: typing.ClassVar[str] = "stage3"
    init_from: str | None = "stage2"
    mode: str = "head"  # head | finetune
    finetune_epochs: int = 0
    learn_saliency_sigma: bool = False


@dataclass
class ExplainConfig(StageConfig):
    """Notebook 06: saliency against Grad-CAM."""

    stage: typing.ClassVar[str] = "explain"
    inapplicable: typing.ClassVar[frozenset] = _READS_A_MODEL
    init_from: str | None = "stage3"
    cam_methods: tuple = DEFAULT_CAMS
    examples_per_class: int = 2
    max_images: int | None = None


@dataclass
class JointConfig(StageConfig):
    """A single joint stage (notebook 07's baselines): every part trains at once, from scratch,
    with the uncertainty-weighted CE + KL loss. ``model``: ``dual`` (the paper's network without
    the cooperative schedule), ``mtunet`` or ``resse_unet`` (docs/method.md section 2, baselines)."""

    stage: typing.ClassVar[str] = "joint"
    model: str = "dual"  # dual | mtunet | resse_unet
    learn_saliency_sigma: bool = False


@dataclass
class ResultsConfig(StageConfig):
    """Notebook 07 and ``cxrlib ablate``: the ablation variants over seeds, and the report.

    A common field set here (e.g. ``image_size``, ``epochs``) overrides every stage of every
    variant; ``seed`` is ignored (``seeds`` varies it).
    """

    stage: typing.ClassVar[str] = "results"
    # the training fields are passed on to the variants' stages; these are not (``seeds`` varies the seed)
    inapplicable: typing.ClassVar[frozenset] = frozenset({"seed", "init_from", "resume"})
    variants: tuple = tuple(VARIANTS)  # every variant of cxrlib.variants
    seeds: tuple = (0, 1, 2)
    train_missing: bool = True  # False: only read the results that exist
    reference: str = "full"  # the variant every other is tested against


STAGE_CONFIGS = {c.stage: c for c in (DataConfig, ContrastiveConfig, EncoderConfig, SaliencyConfig,
                                      FusionConfig, ExplainConfig, JointConfig, ResultsConfig)}

_SYNTHETIC = {"sigma_frac": 0.025}  # 75.5 px of a ~3000 px MIMIC image, for any native size

PROFILE_DEFAULTS = {
    "smoke": {
        # num_workers 0: CI's tiny images decode in milliseconds, so worker start-up would cost more
        "common": {**_SYNTHETIC, "synthetic_images": 48, "image_size": (64, 64), "base_width": 8, "num_workers": 0,
                   "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "eval_batch_size": 8,
                   "n_boot": 50, "examples_per_class": 1},
        "stage3": {"finetune_epochs": 1},
        "explain": {"max_images": 6},
        "results": {"seeds": (0,)},
    },
    "demo": {
        "common": {**_SYNTHETIC, "synthetic_images": 300, "image_size": (128, 96), "base_width": 16,
                   "batch_size": 16, "eval_batch_size": 32, "plateau_patience": 3, "n_boot": 1000},
        "stage1a": {"epochs": 3, "batch_size": 24},
        "stage1b": {"epochs": 6},
        "stage2": {"epochs": 10, "batch_size": 8},
        "stage3": {"epochs": 30, "batch_size": 16},
        "explain": {"max_images": 60},
        "joint": {"epochs": 10, "batch_size": 8},
        # notebook 07 only reads finished variants in `cxrlib run --profile demo` (which stays
        # within minutes); `cxrlib ablate --profile demo` trains them (about an hour on 2 cores).
        "results": {"seeds": (0, 1, 2), "train_missing": False},
    },
    "paper": {
        # activation checkpointing keeps every stage within a 16 GB T4 (README, "On a GPU")
        "common": {"synthetic_images": 1083, "image_size": (640, 512), "pretrained": True, "base_width": 64,
                   "sigma": 75.5, "gaze_source": "eye_gaze", "plateau_patience": 40, "n_boot": 1000,
                   "activation_checkpointing": True},
        # the code validates stage 1a in batches of 32 too: with the summed triplet loss the batch matters
        "stage1a": {"image_size": (320, 256), "epochs": 50, "batch_size": 32, "eval_batch_size": 32},
        "stage1b": {"epochs": 10, "batch_size": 16},
        "stage2": {"epochs": 50, "batch_size": 16},
        "stage3": {"epochs": 40, "batch_size": 6},
        "explain": {"batch_size": 6},
        "joint": {"epochs": 50, "batch_size": 6},
        "results": {"seeds": (0, 1, 2), "train_missing": False},
    },
}


def _check_type(name: str, value, annotation):
    """Coerce papermill/CLI values to the field's type or raise a clear TypeError."""
    hint = typing.get_type_hints(StageConfig).get(name, annotation) if isinstance(annotation, str) else annotation
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ParameterError(f"parameter {name!r} may not be None")
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ParameterError(f"parameter {name!r} must be {wanted}, got {value!r} ({type(value).__name__})")


def make_config(stage: str, profile: str = "smoke", **params):
    """The config of ``stage`` under ``profile``, with ``params`` (not None) on top."""
    if stage not in STAGE_CONFIGS:
        raise ParameterError(f"unknown stage {stage!r}; valid: {sorted(STAGE_CONFIGS)}")
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; valid: {PROFILES}")
    cls = STAGE_CONFIGS[stage]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {unknown} for {cls.__name__} ({stage}); valid parameters: {', '.join(parameter_names(stage))}"
        )
    unused = sorted(set(params) & cls.inapplicable)
    if unused:
        raise ParameterError(f"parameter(s) {unused} do not apply to {cls.__name__} ({stage}), which does not read "
                        f"them; valid parameters: {', '.join(parameter_names(stage))}")
    merged = {}
    defaults = PROFILE_DEFAULTS[profile]
    for source in (defaults.get("common", {}), defaults.get(stage, {})):
        merged.update({k: v for k, v in source.items() if k in valid})
    merged.update({k: v for k, v in params.items() if v is not None})
    _explicit_sigma(merged, params)
    merged["profile"] = profile
    checked = {k: _check_type(k, v, hints[k]) for k, v in merged.items()}
    config = cls(**checked)
    return _finalise(config)


def _finalise(config):
    from cxrlib.data.geometry import check_image_size

    try:
        config.image_size = check_image_size(config.image_size)
    except ValueError as err:
        raise ParameterError(f"parameter 'image_size': {err}") from None
    if config.run_dir is None:  # CXRLIB_RUN_DIR lets the test suite run notebooks in a fresh folder
        config.run_dir = os.environ.get("CXRLIB_RUN_DIR") or str(repository_root() / "runs" / config.profile)
    config.run_dir = str(Path(config.run_dir).expanduser().resolve())
    if config.egd_root is not None and config.image_root is None:
        config.image_root = config.egd_root
    check_data_roots(config)
    choices = {"gaze_source": ("eye_gaze", "fixations"), "weighting": ("count", "duration"),
               "resize": ("pad_resize", "stride"), "frozen_bn": ("eval", "train"),
               "amp_dtype": ("auto", "bf16", "fp16")}
    choices.update(intensity=("minmax", "max"), eval_split=("test", "val"))
    if isinstance(config, ContrastiveConfig):
        choices["loss"] = ("triplet", "supcon", "ntxent")
        choices.update(triplet_feature=("map", "pooled"), triplet_reduction=("sum", "mean"))
    if isinstance(config, FusionConfig):
        choices["mode"] = ("head", "finetune")
    if isinstance(config, JointConfig):
        choices["model"] = ("dual", "mtunet", "resse_unet")
    if isinstance(config, ResultsConfig):
        check_results_config(config)
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ParameterError(f"parameter {name!r} must be one of {allowed}, got {getattr(config, name)!r}")
    check_ranges(config)
    if not 0 <= config.synthetic_difficulty <= 1:
        raise ParameterError(f"parameter 'synthetic_difficulty' must lie in [0, 1], got {config.synthetic_difficulty!r}")
    if config.kld_eps < 0:
        raise ParameterError(f"parameter 'kld_eps' must be >= 0, got {config.kld_eps!r}")
    return config


def _explicit_sigma(merged: dict, params: dict) -> None:
    """A ``sigma`` (native pixels) the caller sets replaces the profile's ``sigma_frac``, unless the
    caller sets ``sigma_frac`` too (which then wins, as in EGDDataset): the way back to pixels."""
    if params.get("sigma") is not None and params.get("sigma_frac") is None:
        merged["sigma_frac"] = None


_NOT_PARAMETERS = {"In", "Out", "exit", "quit", "get_ipython", "display", "IN_COLAB"}


def config_from_namespace(stage: str, namespace: dict):
    """Build a stage config from a notebook's globals (its parameters cell, maybe papermill's).

    Every public, non-module, non-callable global is taken as a parameter, so a parameter
    injected by papermill under a wrong name is caught here instead of being silently ignored.
    """
    params = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _NOT_PARAMETERS
        and not isinstance(v, types.ModuleType) and not callable(v)
    }
    profile = params.pop("profile", "smoke")
    return make_config(stage, profile, **params)


def load_config(path):
    """A config saved by :meth:`StageConfig.save` (checkpoints hold the same dict)."""
    data = json.loads(Path(path).read_text()) if not isinstance(path, dict) else dict(path)
    cls = STAGE_CONFIGS[data.pop("stage")]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def parameter_names(stage: str) -> list[str]:
    """The parameters a stage's notebook (and ``make_config``) accepts: its fields minus ``inapplicable``."""
    cls = STAGE_CONFIGS[stage]
    return [f.name for f in fields(cls) if f.name not in cls.inapplicable]


@dataclass
class ExternalConfig(StageConfig):
    """Notebook 08: the stage-3 model on REFLACX (another eye tracker, five other radiologists),
    beside the centre bias and the inter-reader ceiling (``cxrlib.external``).

    ``reflacx_root`` None: a synthetic REFLACX-format set in the run folder. ``label_mapping``
    None: saliency only; ``"certainty"``: the rule in ``cxrlib.data.reflacx.LABEL_MAPPINGS``.
    """

    stage: typing.ClassVar[str] = "external"
    inapplicable: typing.ClassVar[frozenset] = _READS_A_MODEL
    init_from: str | None = "stage3"
    reflacx_root: str | None = None  # folder holding main_data/ (reflacx-xray-localization/1.0.0)
    reflacx_image_root: str | None = None  # MIMIC-CXR(-JPG) root holding files/p10/...; None: image_root
    reflacx_phases: tuple = (1, 2, 3)
    label_mapping: str | None = None
    min_readers: int = 2  # readers an image needs to enter the inter-reader ceiling
    synthetic_reflacx_images: int = 40
    example_image: str | None = None  # dicom_id of the readers figure; None: the most-read image

    def __post_init__(self):
        if self.label_mapping is not None and self.label_mapping not in ("none", "certainty"):
            raise ValueError(f"parameter 'label_mapping' must be None, 'none' or 'certainty', got {self.label_mapping!r}")
        if self.min_readers < 2:
            raise ValueError(f"parameter 'min_readers' must be at least 2 (a ceiling needs other readers), got {self.min_readers}")
        if not set(self.reflacx_phases) <= {1, 2, 3}:
            raise ValueError(f"parameter 'reflacx_phases' must be a subset of (1, 2, 3), got {self.reflacx_phases!r}")


STAGE_CONFIGS[ExternalConfig.stage] = ExternalConfig
PROFILE_DEFAULTS["smoke"]["external"] = {"synthetic_reflacx_images": 8}
PROFILE_DEFAULTS["demo"]["external"] = {"synthetic_reflacx_images": 40}
PROFILE_DEFAULTS["paper"]["external"] = {"synthetic_reflacx_images": 40}
