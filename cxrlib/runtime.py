"""Device choice, seeding, the random generators' state (for checkpoints) and the environment
printout every notebook starts with."""

from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata

import numpy as np
import torch


def default_device() -> torch.device:
    """CUDA if present, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def config_device(config) -> torch.device:
    """The device a config names (``config.device``), else :func:`default_device`."""
    return torch.device(config.device) if config.device else default_device()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool | None, device) -> bool:
    """Repeatable kernels, so a seeded rerun on the same machine gives the same weights.

    ``enabled=None``: on for CPU (and MPS), off for CUDA, where the deterministic cuDNN and
    cuBLAS paths cost speed. On: ``torch.use_deterministic_algorithms`` (an operation without a
    deterministic kernel warns), cuDNN deterministic without autotuning, and the cuBLAS
    workspace setting it needs (effective when set before the first CUDA matrix product).
    Returns whether it is on.
    """
    device = torch.device(device)
    on = device.type != "cuda" if enabled is None else bool(enabled)
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False
    return on


def set_cpu_threads(n: int | None = None) -> int:
    """Limit torch's intra-op threads; default: the cores this process may use.

    Small machines oversubscribe easily when torch and a DataLoader both spawn threads.
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def environment_report(seed: int | None = None) -> dict:
    """Versions, device and seed, as a dict (notebooks print it)."""
    import torchvision

    device = default_device()
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    if seed is not None:
        report["seed"] = seed
    try:  # the installed distribution's version: importing the package here would be a cycle
        report["cxrlib"] = metadata.version("cxrlib")
    except metadata.PackageNotFoundError:  # pragma: no cover - a checkout on sys.path, not installed
        report["cxrlib"] = "not installed"
    return report


def rng_state() -> dict:
    """Every random generator's state (Python, NumPy, torch CPU and CUDA), as tensors and lists
    that a ``weights_only`` checkpoint can hold; :func:`set_rng_state` restores it (resume)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    np_state = np.random.get_state()
    state["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    state["numpy_pos"], state["numpy_gauss"] = int(np_state[2]), (int(np_state[3]), float(np_state[4]))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
