"""``cxrlib bench --suite``: everything the README's GPU section reports, in one process and a
bounded time, written as JSON and as markdown tables in the README's format with the device's name.

Parts (each skipped, and said so, once ``time_limit_s`` has passed; one that fails is recorded):

1. **network**: the dual-encoder's training step, eager and (run last, as its compilation time is
   not known beforehand) with its repeated blocks compiled (`precision.compile_blocks`),
   channels_last on; the compiled row's wall time includes its compilation.
2. **stages**: every trainable stage of the profile as the trainer configures it
   (`cxrlib.bench.stages.benchmark_stage`), in each of ``dtypes`` with peak memory. A dtype the
   device cannot run is skipped with the reason (the CPU has no autocast here: one float32 row;
   bf16 on a card without native bf16 is emulated, slowly).
3. **evaluation**: the saliency metrics of one validation batch, the NumPy reference per image
   against the batched torch version on the device, and their share of an epoch at EGD-CXR size.
4. **trainer**: one short epoch of ``trainer_stage`` through `stages.run_stage` on the bundled
   synthetic data (loader, step, checkpoint), its images/s against the stage benchmark's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from cxrlib.bench.network import benchmark_models, device_name, sync_device
from cxrlib.bench.stages import EGD_TRAIN_IMAGES, EGD_VAL_IMAGES, benchmark_stage
from cxrlib.training import precision
from cxrlib.training.stages import TRAINABLE_STAGES

__all__ = ["run_suite", "suite_markdown"]


def _dtype_skip(device: torch.device, dtype: str) -> str | None:
    """Why ``dtype`` is not run on ``device`` (None: it is)."""
    if device.type != "cuda":
        return f"{dtype}: autocast runs on CUDA only; the {device.type.upper()} trains in float32 (one fp32 row)"
    if dtype == "bf16" and not precision.bf16_native(device):
        return "bf16: this card has no native bf16 (compute capability < 8.0); emulated bf16 would mislead"
    return None


def _free(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time(fn, device, repeats: int = 3) -> float:
    fn()  # warm-up (allocations, cuDNN, the jitter cache)
    sync_device(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync_device(device)
    return (time.perf_counter() - started) / repeats


def evaluation_cost(device, image_size, n_maps: int = 16) -> dict:
    """Seconds per image of CC, KLD and SIM: the NumPy reference (maps copied to the host, one
    image at a time) against `batch_scores_torch` on ``device``."""
    from cxrlib.metrics import batch_saliency_scores
    from cxrlib.metrics.torch_saliency import batch_scores_torch

    gen = torch.Generator().manual_seed(0)
    h, w = image_size
    predicted_maps = torch.randn(n_maps, 1, h * w, generator=gen).softmax(-1).view(n_maps, 1, h, w).to(device)
    gaze_maps = torch.rand(n_maps, 1, h, w, generator=gen).to(device)
    numpy_s = _time(lambda: batch_saliency_scores(predicted_maps.float().cpu(), gaze_maps.float().cpu()), device)
    torch_s = _time(lambda: batch_scores_torch(predicted_maps, gaze_maps), device)
    return {"numpy_s_per_image": numpy_s / n_maps, "torch_s_per_image": torch_s / n_maps, "n_maps": n_maps}


def _trainer_epoch(stage: str, profile: str, device, dtype_params: dict, params: dict, synthetic_images: int) -> dict:
    from cxrlib.config import make_config
    from cxrlib.training import stages

    with tempfile.TemporaryDirectory(prefix="cxrlib-suite-") as run_dir:
        cfg = make_config(stage, profile, run_dir=run_dir, device=device, epochs=1, pretrained=False, init_from="none",
                          synthetic_images=synthetic_images, **dtype_params, **params,
                          **({"finetune_epochs": 0} if stage == "stage3" else {}))
        data = stages.prepare_data(cfg, progress=False)
        started = time.perf_counter()
        result = stages.run_stage(cfg, data, progress=False)
        wall = time.perf_counter() - started
    row = result.history.iloc[-1]
    return {"stage": stage, "train_images_per_s": float(row["train_images_per_s"]), "epoch_wall_s": wall,
            "train_images": len(data.train)}


def run_suite(*, profile: str = "paper", device=None, stages=TRAINABLE_STAGES, dtypes=("bf16", "fp16"),
              image_size=None, batch_size=None, base_width=None, steps: int = 5, warmup: int = 2,
              time_limit_s: float = 1500.0, trainer_stage: str = "stage2", synthetic_images: int = 48,
              out_dir=None, log=print) -> dict:
    """Run the suite (see the module docstring); return its result and, with ``out_dir``, write
    ``suite.json`` and ``suite.md`` there. ``image_size``/``batch_size``/``base_width`` override
    the profile's (small sizes make the suite a minutes-long CPU check)."""
    from cxrlib.runtime import default_device

    device = torch.device(device) if device is not None else default_device()
    started = time.perf_counter()
    overrides = {k: v for k, v in (("image_size", tuple(image_size) if image_size else None),
                                   ("batch_size", batch_size), ("base_width", base_width)) if v is not None}
    result = {"device": device_name(device), "torch": torch.__version__, "profile": profile, "overrides": overrides,
              "steps": steps, "warmup": warmup, "network": [], "stages": [], "skipped": [], "evaluation": None,
              "trainer": None}

    def time_left(part: str) -> bool:
        if time.perf_counter() - started < time_limit_s:
            return True
        result["skipped"].append(f"{part}: time limit ({time_limit_s:.0f} s) reached")
        return False

    runnable = [d for d in dtypes if _dtype_skip(device, d) is None]
    result["skipped"] += [why for d in dtypes if (why := _dtype_skip(device, d))]
    amp_runs = [{"amp_dtype": d} for d in runnable] or [{"amp": False}]
    first_amp = runnable[0] if runnable else "none"

    size = overrides.get("image_size", (640, 512) if profile == "paper" else (320, 256))
    net_batch = overrides.get("batch_size", 16 if device.type == "cuda" else 2)

    def network_row(compile) -> None:
        if not time_left(f"network step, compile={compile}"):
            return
        t0 = time.perf_counter()
        try:
            row = benchmark_models(["dual"], image_size=size, batch_size=net_batch, device=device, steps=steps,
                                   warmup=warmup, amp=first_amp, base_width=overrides.get("base_width", 64),
                                   channels_last=True, compile=compile)[0]
        except Exception as error:  # noqa: BLE001 - recorded; the other parts still run
            result["skipped"].append(f"network step, compile={compile}: failed, {type(error).__name__}: "
                                     f"{str(error).splitlines()[0]}")
            _free(device)
            return
        row["wall_s"] = time.perf_counter() - t0
        result["network"].append(row)
        log(f"network {row['options']}: {row['train_img_s']:.2f} train img/s ({row['wall_s']:.0f} s with warm-up)")

    network_row(False)

    for stage in stages:
        for amp in amp_runs:
            if not time_left(f"{stage} {amp}"):
                continue
            try:
                row = benchmark_stage(stage, profile, steps=steps, warmup=warmup, device=str(device), **amp, **overrides)
            except Exception as error:  # noqa: BLE001 - one failing stage (e.g. out of memory) must not end the suite
                result["skipped"].append(f"{stage} {amp}: failed, {type(error).__name__}: {str(error).splitlines()[0]}")
                log(result["skipped"][-1])
                _free(device)
                continue
            result["stages"].append(row)
            log(f"{stage} {row['amp']}: {row['train_img_s']:.2f} train img/s, {row['eval_img_s']:.2f} eval img/s, "
                f"peak {row['peak_mem_mib'] / 1024:.2f} GiB")

    if time_left("evaluation"):
        cost = evaluation_cost(device, size)
        ref = next((r for r in result["stages"] if r["stage"] == trainer_stage), None)
        if ref is not None:  # the stage's epoch measured the torch metrics; the NumPy one swaps them in
            torch_total = cost["torch_s_per_image"] * EGD_VAL_IMAGES
            numpy_epoch = ref["epoch_s"] - torch_total + cost["numpy_s_per_image"] * EGD_VAL_IMAGES
            cost.update(stage=trainer_stage, epoch_s=ref["epoch_s"], share_torch=torch_total / ref["epoch_s"],
                        share_numpy=cost["numpy_s_per_image"] * EGD_VAL_IMAGES / numpy_epoch)
        result["evaluation"] = cost
        log(f"evaluation metrics: {cost['numpy_s_per_image'] * 1e3:.2f} ms/image NumPy, "
            f"{cost['torch_s_per_image'] * 1e3:.2f} ms/image torch")

    if time_left(f"trainer epoch ({trainer_stage})"):
        try:
            result["trainer"] = _trainer_epoch(trainer_stage, profile, str(device), amp_runs[0], overrides,
                                               synthetic_images)
        except Exception as error:  # noqa: BLE001 - reported in the tables, the rest is kept
            result["skipped"].append(f"trainer epoch: failed, {type(error).__name__}: {str(error).splitlines()[0]}")
    if (trainer := result["trainer"]) is not None:
        bench = next((r for r in result["stages"] if r["stage"] == trainer_stage), None)
        if bench is not None:
            trainer["bench_train_img_s"] = bench["train_img_s"]
            trainer["ratio"] = trainer["train_images_per_s"] / bench["train_img_s"]
        log(f"trainer {trainer_stage}: {trainer['train_images_per_s']:.2f} img/s"
            + (f" ({trainer['ratio']:.2f}x bench --stage)" if "ratio" in trainer else ""))
    network_row("blocks")  # last: its compilation is the one part whose length is not known beforehand
    result["wall_s"] = time.perf_counter() - started
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "suite.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "suite.md").write_text(suite_markdown(result))
        log(f"wrote {out / 'suite.json'} and {out / 'suite.md'}")
    return result


def suite_markdown(result: dict) -> str:
    """The suite's figures as the README's tables, headed by the device and the settings."""
    lines = [f"Measured on **{result['device']}** (torch {result['torch']}), `cxrlib bench --suite`, profile "
             f"{result['profile']}" + (f", overrides {result['overrides']}" if result["overrides"] else "")
             + f", {result['steps']} timed steps after {result['warmup']} warm-up; {result['wall_s']:.0f} s in all.", ""]
    if result["network"]:
        lines += ["| dual-encoder network | image | batch | amp | train img/s | infer img/s | peak MiB | "
                  "first step s, train/infer (compiled: with the compilation) | wall s (with warm-up) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['options']} | {r['image_size']} | {r['batch_size']} | {r['amp']} | {r['train_img_s']:.2f} | "
                  f"{r['infer_img_s']:.2f} | {r['peak_mem_mib']:.0f} | "
                  f"{r['first_train_step_s']:.1f} / {r['first_infer_step_s']:.1f} | {r['wall_s']:.0f} |"
                  for r in result["network"]]
        lines.append("")
    if result["stages"]:
        lines += ["| stage | amp | train img/s | eval img/s | peak GiB, steps | peak GiB, precompute | epoch s | stage min "
                  "| batch | image | options |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['amp']} | {r['train_img_s']:.1f} | {r['eval_img_s']:.1f} | "
                  f"{r['peak_mem_mib'] / 1024:.2f} | {r['precompute_peak_mib'] / 1024:.2f} | {r['epoch_s']:.0f} | "
                  f"{r['stage_s'] / 60:.1f} | {r['batch_size']} | {r['image_size']} | {r['options']} |"
                  for r in result["stages"]]
        lines += ["", f"Epoch at EGD-CXR size ({EGD_TRAIN_IMAGES} training + {EGD_VAL_IMAGES} validation images); "
                      f"memory: {result['stages'][0]['memory_measure']}.", ""]
    ev = result["evaluation"]
    if ev:
        line = (f"- Evaluation metrics (CC, KLD, SIM): {ev['numpy_s_per_image'] * 1e3:.2f} ms/image with the NumPy "
                f"reference, {ev['torch_s_per_image'] * 1e3:.2f} ms/image batched in torch on the device")
        if "share_torch" in ev:
            line += (f"; share of a {ev['stage']} epoch: {100 * ev['share_numpy']:.1f} % before, "
                     f"{100 * ev['share_torch']:.1f} % now")
        lines.append(line + ".")
    tr = result["trainer"]
    if tr:
        line = (f"- Trainer, one epoch of {tr['stage']} on {tr['train_images']} synthetic training images: "
                f"{tr['train_images_per_s']:.2f} img/s")
        if "ratio" in tr:
            line += f" against {tr['bench_train_img_s']:.2f} from the stage benchmark ({tr['ratio']:.2f}x)"
        lines.append(line + ".")
    lines += [f"- Skipped: {why}." for why in result["skipped"]]
    return "\n".join(lines) + "\n"


def run_suite_cli(args) -> int:
    """``cxrlib bench --suite``: options from ``cxrlib.bench.network.build_parser``."""
    dtypes = ("bf16", "fp16") if args.amp == "auto" else (() if args.amp == "none" else (args.amp,))
    run_suite(profile=args.profile, device=args.device, stages=args.stage or TRAINABLE_STAGES, dtypes=dtypes,
              image_size=args.image_size, batch_size=args.batch_size, base_width=args.base_width, steps=args.steps,
              warmup=args.warmup, time_limit_s=args.time_limit, synthetic_images=args.synthetic_images,
              out_dir=args.out)
    print((Path(args.out) / "suite.md").read_text())
    return 0
