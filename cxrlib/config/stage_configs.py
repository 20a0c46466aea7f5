"""The typed configuration of each stage: one dataclass per notebook, whose fields are that
notebook's parameters (:mod:`cxrlib.config` builds them from a profile and checks them).

``None`` in a field means "the profile's default" (:mod:`cxrlib.config.profiles`). Each class says in
``inapplicable`` which common fields its notebook does not read, so that setting one (``lr`` on
the data notebook) is reported as a mistake instead of being ignored.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrlib.runfolder import atomic_write_text, stage_lock
from cxrlib.config.stage_table import STAGE_TABLE, upstream
from cxrlib.config.variants import VARIANTS

DEFAULT_CAMS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")  # Score-CAM: on request (slow)

# Fields of the training loop. A notebook that trains nothing rejects them (``inapplicable``):
# ``lr`` on the data notebook is a mistake to report, not a setting to ignore.
_TRAINING_FIELDS = frozenset({"epochs", "batch_size", "lr", "plateau_patience", "early_stopping", "max_steps_per_epoch",
                              "amp", "amp_dtype", "channels_last", "compile", "activation_checkpointing", "checkpoint_budget_gib",
                              "sync_batchnorm", "resume", "init_from", "frozen_bn", "reuse_frozen_features",
                              "shuffle", "drop_last", "reload_best_on_drop", "plateau_eps", "lr_floor",
                              "val_shuffle", "eval_fp32"})
# A notebook that reads a trained model names its upstream stage in ``init_from`` (colab.start checks it).
_READS_A_MODEL = (_TRAINING_FIELDS - {"init_from"}) | {"pretrained"}

# Fields that do not change a stage's weights: a resumed stage may differ in them.
NOT_WEIGHT_FIELDS = frozenset({
    "run_dir", "resume", "device", "num_workers", "eval_batch_size", "n_boot", "reuse_frozen_features",
    "sync_batchnorm", "deterministic", "channels_last", "compile", "activation_checkpointing", "checkpoint_budget_gib",
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
    # torch.compile: True/"blocks" the repeated blocks (dense layers, Res-SE, decoder levels), "step" the whole
    # training step; falls back to eager with a warning
    compile: bool | str = False
    # recompute UNet levels in the backward pass (less memory, slower): True every level, "auto" the fewest
    # (largest first) that fit checkpoint_budget_gib (cxrlib.model.memory), or level names "res_se.0,decoder.4"
    activation_checkpointing: bool | str = False
    checkpoint_budget_gib: float = 14.0  # the estimated peak "auto" must stay under (GiB)
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
    split: str = "patient"  # "image": the code's per-class counter over images (patients may straddle splits)
    reload_best_on_drop: bool = False  # True: reload the best weights at each learning-rate drop (the code)
    plateau_eps: float = 1e-8  # ReduceLROnPlateau's eps (torch's default); the code: 0
    lr_floor: float = 0.0  # stop once the learning rate falls below this; 0: never (the code: 1e-8)
    val_shuffle: bool = False  # True: validation batches in a new order each epoch (the code's loaders)
    eval_fp32: bool = False  # True: validation without autocast, in fp32 (the code); only matters with amp
    fidelity: str = "method"  # "code": every switch as the authors' code ran (cxrlib.config.fidelity)
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
    init_from: str | None = upstream(stage)
    linear_probe: bool = False  # True: DenseNet frozen, only the Linear layer trains


@dataclass
class SaliencyConfig(StageConfig):
    """Stage 2 (notebook 04): Res-SE encoder, decoder and saliency head; DenseNet frozen."""

    stage: typing.ClassVar[str] = "stage2"
    init_from: str | None = upstream(stage)


@dataclass
class FusionConfig(StageConfig):
    """Stage 3 (notebook 05): the fusion classifier, then (``mode="finetune"``) every part for
    ``finetune_epochs`` with the joint stage's uncertainty-weighted CE + KL. ``mode="joint"``:
    every part from the start with that loss, the recipe of the code's ``Module/RUN.py`` (with
    ``init_from="none"``: from ImageNet, as the code ran it)."""

    stage: typing.ClassVar[str] = "stage3"
    init_from: str | None = upstream(stage)
    mode: str = "head"  # head | finetune | joint
    finetune_epochs: int = 0
    learn_saliency_sigma: bool = False


@dataclass
class ExplainConfig(StageConfig):
    """Notebook 06: saliency against Grad-CAM."""

    stage: typing.ClassVar[str] = "explain"
    inapplicable: typing.ClassVar[frozenset] = _READS_A_MODEL
    init_from: str | None = upstream(stage)
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
    variants: tuple = tuple(VARIANTS)  # every variant of cxrlib.config.variants
    seeds: tuple = (0, 1, 2)
    train_missing: bool = True  # False: only read the results that exist
    reference: str = "full"  # the variant every other is tested against


@dataclass
class ExternalConfig(StageConfig):
    """Notebook 08: the stage-3 model on REFLACX (another eye tracker, five other radiologists),
    beside the centre bias and the inter-reader ceiling (``cxrlib.evaluation.external``).

    ``reflacx_root`` None: a synthetic REFLACX-format set in the run folder. ``label_mapping``
    None: saliency only; ``"certainty"``: the rule in ``cxrlib.data.reflacx.LABEL_MAPPINGS``.
    """

    stage: typing.ClassVar[str] = "external"
    inapplicable: typing.ClassVar[frozenset] = _READS_A_MODEL
    init_from: str | None = upstream(stage)
    reflacx_root: str | None = None  # folder holding main_data/ (reflacx-xray-localization/1.0.0)
    reflacx_image_root: str | None = None  # MIMIC-CXR(-JPG) root holding files/p10/...; None: image_root
    reflacx_phases: tuple = (1, 2, 3)
    label_mapping: str | None = None
    min_readers: int = 2  # readings (each a different radiologist) an image needs to enter the inter-reader ceiling
    reflacx_off_image: str = "drop"  # fixations off the image: "drop" (and count) | "cut" (REFLACX authors' heatmaps)
    synthetic_reflacx_images: int = 40
    example_image: str | None = None  # dicom_id of the readers figure; None: the most-read image

    def __post_init__(self):
        if self.label_mapping is not None and self.label_mapping not in ("none", "certainty"):
            raise ValueError(f"parameter 'label_mapping' must be None, 'none' or 'certainty', got {self.label_mapping!r}")
        if self.min_readers < 2:
            raise ValueError(f"parameter 'min_readers' must be at least 2 (a ceiling needs other readers), got {self.min_readers}")
        if self.reflacx_off_image not in ("drop", "cut"):
            raise ValueError(f"parameter 'reflacx_off_image' must be 'drop' or 'cut', got {self.reflacx_off_image!r}")
        if not set(self.reflacx_phases) <= {1, 2, 3}:
            raise ValueError(f"parameter 'reflacx_phases' must be a subset of (1, 2, 3), got {self.reflacx_phases!r}")


# One config class per row of the stage table, in its order (a row without a class fails here).
_CLASSES = {c.stage: c for c in (DataConfig, ContrastiveConfig, EncoderConfig, SaliencyConfig, FusionConfig,
                                 ExplainConfig, JointConfig, ResultsConfig, ExternalConfig)}
if set(_CLASSES) != set(STAGE_TABLE):
    raise RuntimeError(f"stage table and config classes differ: {sorted(set(_CLASSES) ^ set(STAGE_TABLE))}")
STAGE_CONFIGS = {name: _CLASSES[name] for name in STAGE_TABLE}
