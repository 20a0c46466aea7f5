"""``cxrlib bench --stage S``: one training stage's step, as the trainer configures it.

Where ``cxrlib bench`` times a whole network, this times what a stage really runs: the stage's
model with its frozen parts, its step function, its batch size, image size and precision
(``amp_dtype``; ``--amp fp16`` stands for a T4), channels_last, activation checkpointing and,
where the trainer reuses frozen features (stage 2: the frozen DenseNet; stage 3: the fused
vector), the cached features in place of the frozen forward pass. The inputs are random tensors
of the real shapes, so the figure is the GPU's, not the data loader's (``cxrlib bench-data``).

Printed per stage: training images/s, evaluation images/s, peak memory, the one-off feature
precompute, and the epoch time at EGD-CXR size (about 760 training and 108 validation images: a
70/10/20 split of 1,083); for several stages also the whole chain at the profile's epochs.
"""

from __future__ import annotations

import tempfile
import time

import torch

from cxrlib.bench.network import device_name, PeakMemory, sync_device
from cxrlib.config import make_config
from cxrlib.config.stage_table import CHAIN, STAGE_TABLE  # CHAIN: the cooperative stages
from cxrlib.runtime import config_device
from cxrlib.training.stages import TRAINABLE_STAGES

__all__ = ["benchmark_stage", "format_stage_rows", "EGD_TRAIN_IMAGES", "EGD_VAL_IMAGES"]

EGD_TRAIN_IMAGES, EGD_VAL_IMAGES = 760, 108  # 70 % / 10 % of EGD-CXR's 1,083 images


def _random_samples(config, n: int, seed: int = 0) -> list[dict]:
    """``n`` samples with the keys and shapes the loader gives a stage (image, gaze map, label)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = config.image_size
    samples = []
    for i in range(n):
        gaze_map = torch.rand(1, h, w, generator=gen)
        samples.append({"image": torch.rand(1, h, w, generator=gen), "gaze_map": gaze_map / gaze_map.sum(),
                        "label": i % 3})
    return samples


def _setup(config, device):
    """The model, trainer and frozen-feature reuse of a stage, from the stage registry (as
    ``stages.run_stage`` sets them up)."""
    from cxrlib.training import stages

    model = stages.build_stage_model(config).to(device)
    return model, stages.stage_trainer(config, model, progress=False), stages.feature_reuse(config)


def benchmark_stage(stage: str, profile: str = "paper", *, steps: int = 5, warmup: int = 2, device=None,
                    **params) -> dict:
    """Time ``steps`` training steps of ``stage`` under ``profile`` (``params`` override fields).

    ``warmup`` steps first (cuDNN autotuning, allocator growth, compilation). Weights are random
    (``pretrained=False``): this measures cost, not accuracy.
    """
    if stage not in TRAINABLE_STAGES:
        raise ValueError(f"--stage must be one of {TRAINABLE_STAGES}, got {stage!r}")
    params = {"pretrained": False, "init_from": "none", **params}
    if STAGE_TABLE[stage].finetune:  # time the first phase (the head) only
        params.setdefault("finetune_epochs", 0)
    with tempfile.TemporaryDirectory(prefix="cxrlib-bench-") as run_dir:
        config = make_config(stage, profile, run_dir=run_dir, device=device, **params)
        device = config_device(config)
        config.device = str(device)
        batch = config.batch_size
        with PeakMemory(device) as memory:
            model, trainer, reuse = _setup(config, device)
            warm, timed = (_random_samples(config, n * batch, seed=s) for s, n in ((1, warmup), (2, steps)))
            precompute_s = 0.0
            if reuse is not None:  # the trainer's one-off pass over the frozen part
                sync_device(device)
                started = time.perf_counter()
                warm, timed = (reuse(model, d, config, progress=False) if d else d for d in (warm, timed))
                sync_device(device)
                precompute_s = (time.perf_counter() - started) / (len(warm) + len(timed))
            precompute_mib = memory.reset() if reuse is not None else 0.0  # the one-off pass, apart
            if warmup:
                trainer.train_epoch(warm, 0)
            sync_device(device)
            started = time.perf_counter()
            trainer.train_epoch(timed, 1)
            sync_device(device)
            train_rate = len(timed) / (time.perf_counter() - started)
            trainer.evaluate(timed)  # warm-up: cuDNN tunes each new batch shape once
            sync_device(device)
            started = time.perf_counter()
            trainer.evaluate(timed)
            sync_device(device)
            eval_rate = len(timed) / (time.perf_counter() - started)
    epoch_s = EGD_TRAIN_IMAGES / train_rate + EGD_VAL_IMAGES / eval_rate
    options = [o for o, on in (("channels_last", trainer.channels_last), ("compile", config.compile),
                               ("checkpointing", config.activation_checkpointing),
                               ("cached features", reuse is not None)) if on]
    return {
        "stage": stage, "profile": profile, "device": device_name(device),
        "image_size": "x".join(map(str, config.image_size)), "batch_size": batch,
        "amp": trainer.autocast.name, "options": ",".join(options) or "-",
        "train_img_s": train_rate, "eval_img_s": eval_rate, "peak_mem_mib": memory.mib,
        "precompute_peak_mib": precompute_mib, "memory_measure": memory.label,
        "precompute_s_per_image": precompute_s,
        "epoch_s": epoch_s,  # the precompute runs once per stage, not per epoch
        "stage_s": epoch_s * config.epochs + precompute_s * (EGD_TRAIN_IMAGES + EGD_VAL_IMAGES),
        "epochs": config.epochs,
    }


def format_stage_rows(rows: list[dict]) -> str:
    """Aligned text table of ``benchmark_stage`` rows, with the chain's total when there are several."""
    header = ("stage", "train img/s", "eval img/s", "peak GiB", "precompute GiB", "epoch s", "epochs",
              "stage min", "amp", "batch", "image", "options")
    cells = [header] + [
        (r["stage"], f"{r['train_img_s']:.1f}", f"{r['eval_img_s']:.1f}", f"{r['peak_mem_mib'] / 1024:.2f}",
         f"{r['precompute_peak_mib'] / 1024:.2f}" if r["precompute_peak_mib"] else "-",
         f"{r['epoch_s']:.0f}", str(r["epochs"]), f"{r['stage_s'] / 60:.1f}", r["amp"], str(r["batch_size"]),
         r["image_size"], r["options"])
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    left = {0, 8, 10, 11}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    if rows:
        lines.append(f"device: {rows[0]['device']}; memory: {rows[0]['memory_measure']}; epoch at EGD-CXR size "
                     f"({EGD_TRAIN_IMAGES} train + {EGD_VAL_IMAGES} val images), profile {rows[0]['profile']}")
    chain = [r for r in rows if r["stage"] in CHAIN]  # the joint stage is a baseline, not part of it
    if len(chain) > 1:
        lines.append(f"cooperative chain ({', '.join(r['stage'] for r in chain)}) at the profile's epochs: "
                     f"{sum(r['stage_s'] for r in chain) / 3600:.2f} h")
    return "\n".join(lines)


def run_stages(args) -> int:
    """``cxrlib bench --stage ...``: one row per stage, options from ``cxrlib.bench.network.build_parser``."""
    params = {}
    if args.image_size:
        params["image_size"] = tuple(args.image_size)
    if args.batch_size:
        params["batch_size"] = args.batch_size
    if args.base_width:
        params["base_width"] = args.base_width
    if args.amp == "none":
        params["amp"] = False
    else:
        params["amp_dtype"] = args.amp
    switches = {"auto": None, "on": True, "off": False}
    if args.channels_last != "auto":
        params["channels_last"] = switches[args.channels_last]
    if args.checkpointing != "auto":
        params["activation_checkpointing"] = switches[args.checkpointing]
    params["compile"] = args.compile
    rows = []
    for stage in args.stage:
        rows.append(benchmark_stage(stage, args.profile, steps=args.steps, warmup=args.warmup,
                                    device=args.device, **params))
        print(format_stage_rows(rows[-1:]).splitlines()[2], flush=True)  # progress: the row as it comes
    print(format_stage_rows(rows))
    return 0
