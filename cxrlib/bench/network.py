"""Speed and memory of the models (``cxrlib bench``): how long would each stage take on this machine?

For each model: parameters, training-step throughput (forward + backward + Adam step on the
losses of docs/method.md section 3), inference throughput (eval, no grad) and peak memory, on random
inputs of the paper's shapes (docs/method.md section 2: 320x256 or 640x512, H and W multiples of 32).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import platform
import resource
import sys
import time

import torch
import torch.nn.functional as F

from cxrlib.training import precision
from cxrlib.config.stage_table import NETWORK_FIELDS  # which networks take base_width
from cxrlib.model import MODEL_NAMES, build_model, set_activation_checkpointing
from cxrlib.runtime import default_device

__all__ = ["benchmark_models", "format_benchmark", "main"]



def _autocast(device: torch.device, amp) -> "precision.Autocast":
    """``--amp`` auto/bf16/fp16/none as the trainer's autocast set-up (cxrlib.training.precision): AMP on
    CUDA only, bf16 only on cards that have it natively unless asked for."""
    if amp in (False, "none"):
        return precision.autocast_settings(device, False)
    return precision.autocast_settings(device, None, "auto" if amp in (None, True, "auto") else amp)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
        except OSError:
            pass
        return f"{name} ({torch.get_num_threads()} threads)"
    return device.type


def sync_device(device: torch.device) -> None:
    # kernels run asynchronously; time only finished work
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc), so the next model's RSS growth is its own."""
    gc.collect()
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)
        except (OSError, AttributeError):  # musl and others have no malloc_trim
            pass


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))


class PeakMemory:
    """Peak memory of a block of work, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the increase of the process's
    peak resident set over its resident set at the start; on Linux the peak is reset first
    (``/proc/self/clear_refs``) so each model is measured alone, elsewhere ``ru_maxrss`` is a
    process-lifetime peak and a model smaller than an earlier one can show 0.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.proc = False
        if device.type == "cuda":
            self.label = "cuda max_memory_allocated"
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # "5" resets VmHWM, the peak RSS (Linux >= 4.0)
                self.proc = True
                self.label = "peak RSS increase"
            except OSError:
                self.label = "ru_maxrss increase"

    def _rss_kib(self, peak: bool) -> float:
        if self.proc:
            return _proc_status_kib("VmHWM" if peak else "VmRSS")
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 1024 if sys.platform == "darwin" else kib  # macOS reports bytes

    def __enter__(self):
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.proc:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = self._rss_kib(peak=False)
        else:
            self.start = self._rss_kib(peak=True)
        return self

    def reset(self) -> float:
        """The peak so far (MiB), then start a new measurement (CUDA only; elsewhere 0 and no reset)."""
        if self.device.type != "cuda":
            return 0.0
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = max(0.0, self._rss_kib(peak=True) - self.start) / 1024


def _losses(out: dict, y: torch.Tensor, gaze_map: torch.Tensor) -> torch.Tensor:
    """CE on logits plus KL(gaze_map || prediction) on the saliency map (docs/method.md section 3)."""
    loss = F.cross_entropy(out["logits"].float(), y)
    if "saliency_log" in out:
        log_p = out["saliency_log"].float().flatten(1)
        loss = loss + F.kl_div(log_p, gaze_map.flatten(1), reduction="batchmean")
    return loss


def _throughput(step, n_images: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(images per second over ``steps`` timed steps, seconds of the first step): the warm-up
    steps are not counted in the rate (cuDNN autotuning, allocator growth, lazy init, and with
    ``compile`` the compilation, which the first step's seconds hold)."""
    first = None
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        step()
        sync_device(device)
        first = time.perf_counter() - start if first is None else first
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync_device(device)
    return n_images * steps / (time.perf_counter() - start), first


def _bench_one(name, *, image_size, batch_size, device, steps, warmup, autocast, base_width,
               channels_last=None, compile=False, checkpointing=False) -> dict:
    h, w = image_size
    gen = torch.Generator().manual_seed(0)
    cl = precision.use_channels_last(device, channels_last)
    x = precision.to_memory_format(torch.rand(batch_size, 1, h, w, generator=gen).to(device), cl)
    y = torch.randint(0, 3, (batch_size,), generator=gen).to(device)
    gaze_map = torch.rand(batch_size, 1, h, w, generator=gen)
    gaze_map = (gaze_map / gaze_map.sum(dim=(2, 3), keepdim=True)).to(device)  # sums to 1 per image
    kwargs = {"base_width": base_width} if "base_width" in NETWORK_FIELDS.get(name, ()) else {}
    precision.configure_backends(device)

    with PeakMemory(device) as memory:
        model = build_model(name, **kwargs).to(device)
        if cl:
            model.to(memory_format=torch.channels_last)
        set_activation_checkpointing(model, checkpointing)
        params = sum(p.numel() for p in model.parameters())
        opt = precision.adam(model.parameters(), lr=1e-4, device=device)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        scaler = torch.amp.GradScaler(device.type, enabled=autocast.scaler)
        if compile in (True, "blocks"):  # the repeated blocks, in place (precision.compile_blocks)
            precision.compile_blocks(model, what=name)
            forward = model
        else:  # "step": the whole forward pass; False: eager
            forward = precision.compile_step(model, compile == "step", what=name)

        def train_step():
            with torch.autocast(device.type, dtype=autocast.dtype, enabled=autocast.enabled):
                loss = _losses(forward(x), y, gaze_map)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        def infer_step():
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast.dtype, enabled=autocast.enabled):
                forward(x)

        model.train()
        train_rate, first_train = _throughput(train_step, batch_size, steps, warmup, device)
        model.eval()
        infer_rate, first_infer = _throughput(infer_step, batch_size, steps, warmup, device)
    del model, opt
    return {
        "model": name,
        "device": device_name(device),
        "image_size": f"{h}x{w}",
        "batch_size": batch_size,
        "amp": autocast.name if autocast.enabled else "none",
        "options": ",".join([o for o, on in (("channels_last", cl), ("compile blocks" if compile is True else f"compile {compile}", compile),
                                             ("checkpointing", checkpointing)) if on]) or "-",
        "params": params,
        "train_img_s": train_rate,
        "infer_img_s": infer_rate,
        "first_train_step_s": first_train,  # with compile: the compilation of the training graphs
        "first_infer_step_s": first_infer,
        "peak_mem_mib": memory.mib,
        "memory_measure": memory.label,
    }


def benchmark_models(names=("dual", "mtunet", "densenet"), *, image_size=(320, 256), batch_size: int = 2,
                     device=None, steps: int = 3, warmup: int = 1, amp=None, base_width: int = 64,
                     channels_last=None, compile=False, checkpointing: bool = False) -> list[dict]:
    """One row per model: params, train/inference images per second, peak memory, device, AMP.

    ``amp``: None/"auto" (CUDA: bf16 on cards with native bf16, else fp16; none elsewhere),
    "bf16", "fp16", or False/"none". ``channels_last`` (None: CUDA only), ``compile`` and
    ``checkpointing`` as the trainer's options of the same names. Inputs are random: this
    measures cost, not accuracy.
    """
    device = torch.device(device) if device is not None else default_device()
    h, w = image_size
    if h % 32 or w % 32:
        raise ValueError(f"image_size must be multiples of 32, got {tuple(image_size)}")
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; valid names: {', '.join(MODEL_NAMES)}")
    autocast = _autocast(device, amp)
    rows = []
    for name in names:
        rows.append(_bench_one(name, image_size=(h, w), batch_size=batch_size, device=device,
                               steps=steps, warmup=warmup, autocast=autocast, base_width=base_width,
                               channels_last=channels_last, compile=compile, checkpointing=checkpointing))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_benchmark(rows: list[dict]) -> str:
    """Aligned text table of ``benchmark_models`` rows; the memory column names its measure."""
    if not rows:
        return "(no models)"
    measure = rows[0]["memory_measure"]
    header = ("model", "params", "train img/s", "infer img/s", "first step s (train/infer)", f"peak MiB ({measure})",
              "amp", "batch", "image", "options", "device")
    cells = [header] + [
        (r["model"], f"{r['params'] / 1e6:.2f}M", f"{r['train_img_s']:.2f}", f"{r['infer_img_s']:.2f}",
         f"{r['first_train_step_s']:.1f}/{r['first_infer_step_s']:.1f}",
         f"{r['peak_mem_mib']:.0f}", r["amp"], str(r["batch_size"]), r["image_size"], r["options"], r["device"])
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    left = {0, 6, 8, 9, 10}  # text columns left-aligned, numbers right-aligned
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """Options of ``cxrlib bench``: whole networks (``--models``) or training stages (``--stage``)."""
    parser = argparse.ArgumentParser(prog="cxrlib bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dual", "mtunet", "densenet"], choices=MODEL_NAMES)
    parser.add_argument("--image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="default: 320 256 (--models), the profile's (--stage)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 (--models), the profile's (--stage)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cxrlib.runtime.default_device()")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                        help="auto: bf16 on cards with native bf16, else fp16; fp16 stands for a T4")
    parser.add_argument("--base-width", type=int, default=None)
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: CUDA only")
    parser.add_argument("--compile", nargs="?", const="blocks", default=False, choices=["blocks", "step"],
                        help="torch.compile the repeated blocks (alone or 'blocks') or the whole forward pass "
                             "('step'); the table's first-step seconds then hold the compilation")
    parser.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto",
                        help="activation checkpointing; auto: off (--models), the profile's (--stage)")
    parser.add_argument("--stage", nargs="+", default=None, metavar="STAGE",
                        help="time these training stages as the trainer configures them "
                             "(stage1a stage1b stage2 stage3 joint) instead of whole networks")
    parser.add_argument("--profile", default="paper", choices=["smoke", "demo", "paper"], help="with --stage or --suite")
    parser.add_argument("--suite", action="store_true",
                        help="everything the README's GPU section reports, in one process (cxrlib.bench.suite): "
                             "network step eager/compiled, every stage (or --stage ...) in bf16 and fp16 (--amp: "
                             "one), evaluation, one trainer epoch; JSON and markdown in --out")
    parser.add_argument("--time-limit", type=float, default=1500.0, help="--suite: seconds before parts are skipped")
    parser.add_argument("--out", default="runs/bench-suite", help="--suite: folder for suite.json and suite.md")
    parser.add_argument("--synthetic-images", type=int, default=48, help="--suite: images of the trainer's epoch")
    return parser


def _switch(value: str):
    return {"auto": None, "on": True, "off": False}[value]


def run_models(args) -> int:
    """``cxrlib bench --models ...``: print the table of :func:`benchmark_models`."""
    rows = benchmark_models(args.models, image_size=tuple(args.image_size or (320, 256)),
                            batch_size=args.batch_size or 2, device=args.device, steps=args.steps,
                            warmup=args.warmup, amp=args.amp, base_width=args.base_width or 64,
                            channels_last=_switch(args.channels_last), compile=args.compile,
                            checkpointing=bool(_switch(args.checkpointing)))
    print(format_benchmark(rows))
    return 0


def main(argv=None) -> int:
    """The whole-network benchmark alone (``cxrlib bench`` also takes ``--stage``: see cxrlib.cli)."""
    return run_models(build_parser().parse_args(argv))
