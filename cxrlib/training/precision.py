"""Precision and speed settings per device: one place decides them for the trainer and the benchmarks.

* **Autocast dtype.** bf16 only where the GPU computes it natively (compute capability 8.0 and
  newer: A100, L4, H100, ...). Older cards (the T4 of Colab is 7.5) emulate bf16 slowly, and
  ``torch.cuda.is_bf16_supported()`` still says True there (its default counts emulation), so it
  is not asked. They get fp16 with a gradient scaler. CPU and MPS run in float32.
* **channels_last** (NHWC) memory format for networks and inputs on CUDA: cuDNN's convolutions
  and BatchNorm are faster in it with tensor cores. On the CPU it was slower for these networks
  (see the README's benchmarks), so ``None`` means CUDA only.
* **torch.compile** is opt-in and falls back to eager with a warning where it cannot compile.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from cxrlib.config.choices import AMP_DTYPES  # (declared once, with the other choices)



def _warn_eager(what: str, error: Exception) -> None:
    """One warning when compiling failed: what, the error's first line, and that eager runs now."""
    first = str(error).splitlines()[0] if str(error) else ""
    warnings.warn(f"torch.compile of the {what} failed ({type(error).__name__}: {first}); running eager",
                  stacklevel=3)


def bf16_native(device: torch.device | str | None = None) -> bool:
    """True when ``device`` is a CUDA GPU with native bf16 tensor cores (compute capability >= 8.0)."""
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


@dataclass(frozen=True)
class Autocast:
    """What a training step runs in: ``enabled`` autocast to ``dtype``, with a gradient scaler or not."""

    enabled: bool
    dtype: torch.dtype
    scaler: bool

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32") if self.enabled else "fp32"


def autocast_settings(device: torch.device, amp: bool | None = None, amp_dtype: str = "auto") -> Autocast:
    """The autocast set-up of a device.

    ``amp``: None means on for CUDA only; False turns it off; True asks for it (still CUDA only:
    CPU autocast would change the CPU results the tests pin). ``amp_dtype``: ``auto`` picks bf16
    on native hardware, else fp16; ``bf16`` or ``fp16`` force one. fp16 always comes with a
    gradient scaler, since its small range underflows gradients without one.
    """
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"parameter 'amp_dtype' must be one of {AMP_DTYPES}, got {amp_dtype!r}")
    enabled = device.type == "cuda" and (amp is None or bool(amp))
    if not enabled:
        return Autocast(False, torch.float32, False)
    if amp_dtype == "bf16" or (amp_dtype == "auto" and bf16_native(device)):
        return Autocast(True, torch.bfloat16, False)
    return Autocast(True, torch.float16, True)


def autocast_context(device: torch.device, setting: Autocast):
    """The ``torch.autocast`` block of ``setting`` (a no-op when it is disabled)."""
    return torch.autocast(device.type, dtype=setting.dtype, enabled=setting.enabled)


def config_autocast(config, device: torch.device):
    """The autocast block a stage config asks for on ``device`` (``amp``, ``amp_dtype``): what the
    trainer's step runs in, and so what a frozen-feature precompute must run in too."""
    return autocast_context(device, autocast_settings(device, config.amp, config.amp_dtype))


def use_channels_last(device: torch.device, channels_last: bool | None = None) -> bool:
    """channels_last on CUDA by default (None); an explicit True/False wins everywhere."""
    return device.type == "cuda" if channels_last is None else bool(channels_last)


def to_memory_format(x, enabled: bool):
    """A 4-D tensor in channels_last when ``enabled``; anything else unchanged."""
    if enabled and torch.is_tensor(x) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning (fixed input sizes in every stage) and TF32 matmuls on CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def adam(params, *, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused CUDA kernel where it applies (one launch for all parameters)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type == "cuda" or None)


def compile_step(step: Callable, enabled: bool, *, what: str = "training step") -> Callable:
    """``torch.compile(step)`` when ``enabled``, else ``step`` itself.

    Compiling a function (the loss function applied to model and batch) instead of the model keeps
    the model's modules and state-dict keys as they are. torch.compile compiles at the first call,
    where a platform without a working compiler fails: then a warning, and eager from there on.
    """
    if not enabled:
        return step
    compiled = torch.compile(step)
    current = [compiled]

    def call(*args, **kwargs):
        if current[0] is compiled:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - reported, then the eager path runs
                _warn_eager(what, error)
                current[0] = step
        return step(*args, **kwargs)

    return call


def apply_activation_checkpointing(model: torch.nn.Module, config, autocast: Autocast) -> list[str] | bool:
    """Set ``config.activation_checkpointing`` on ``model``'s UNet levels; return what was set
    (True/False, or the level names). ``"auto"``: the fewest levels, largest first, whose
    estimated peak fits ``config.checkpoint_budget_gib`` (:mod:`cxrlib.model.memory`, estimated
    at the config's image size and batch, half the activation bytes under fp16/bf16 autocast)."""
    from cxrlib.model import set_activation_checkpointing
    from cxrlib.model.memory import choose_checkpoint_levels

    setting = config.activation_checkpointing
    if setting == "auto":
        setting, _ = choose_checkpoint_levels(model, image_size=tuple(config.image_size), batch_size=config.batch_size,
                                              budget_gib=config.checkpoint_budget_gib, half=autocast.enabled)
    try:
        set_activation_checkpointing(model, setting)
    except ValueError as error:
        raise ValueError(f"{config.stage}: {error}") from None
    return setting


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks a network repeats, outermost only: DenseNet's dense blocks, the Res-SE encoder
    levels, and the decoder's up and block modules (the UNet's DoubleConv levels).

    `compile_blocks` compiles a dense block layer by layer (`_layerwise_dense_block`): torchvision
    hands each layer the list of all earlier feature maps, and torch.compile guards on a list's
    length, so each of DenseNet201's 98 layers would be a graph of its own; compiling the block
    whole unrolls up to 48 layers into one graph, which took over ten minutes to compile on a
    2-core CPU."""
    from torchvision.models.densenet import _DenseBlock

    from cxrlib.model.blocks import DoubleConv, ResSEBlock, Up

    kinds = (_DenseBlock, ResSEBlock, DoubleConv, Up)
    found, inside = [], set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, kinds):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found  # the decoder's levels are its Up and DoubleConv modules; MT-UNet's encoder uses DoubleConv too


def _layerwise_dense_block(block: torch.nn.Module) -> list[torch.nn.Module] | None:
    """Give a torchvision ``_DenseBlock`` a forward that concatenates the earlier maps before each
    layer, so that every layer receives one tensor instead of a list, and return its layers to be
    compiled one by one. The numbers are the same (the layer would concatenate the same maps
    itself); with the channel count as a dynamic size, DenseNet201's 98 layers share one graph per
    mode. None for a ``memory_efficient`` block: there the list is the point (the concatenation is
    recomputed in the backward pass, not stored), so the block is compiled whole."""
    layers = list(block.values())
    if any(getattr(layer, "memory_efficient", False) for layer in layers):
        return None

    def forward(init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)

    block.forward = forward
    return layers


def compile_blocks(model: torch.nn.Module, *, what: str = "model", backend: str = "inductor") -> int:
    """``torch.compile`` each repeated block of ``model`` (`repeated_blocks`) in place of the whole
    step: blocks of one kind share the compiled code and, where their shapes agree, the graph
    (parameters are graph inputs), so compilation takes a fraction of the whole step's. The forward of each block is replaced on the instance:
    module names and state-dict keys stay as they are. Where compilation fails (at the first call,
    e.g. no C++ compiler), one warning, and every block runs eager from then on. Returns the number
    of blocks. ``backend``: torch.compile's (the tests use "aot_eager": the same graph capture and
    autograd, without inductor's code generation, which takes minutes on a small CPU)."""
    from torchvision.models.densenet import _DenseBlock

    blocks, dynamic = [], set()
    for block in repeated_blocks(model):
        layers = _layerwise_dense_block(block) if isinstance(block, _DenseBlock) else None
        blocks += layers or [block]
        dynamic.update(id(layer) for layer in layers or ())
    state = {"eager": False}
    # One graph per instance and mode (train/eval, grad/no grad) at most: above dynamo's default of
    # 8 per code object, the blocks past it would silently run eager.
    most = max((sum(type(b) is type(a) for b in blocks) for a in blocks), default=0)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6: old name
    setattr(config, name, max(getattr(config, name), 4 * most))

    def guarded(module, eager, compiled):
        def forward(*args, **kwargs):
            if not state["eager"]:
                try:
                    return compiled(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - reported, then the eager path runs
                    _warn_eager(f"{what}'s blocks", error)
                    state["eager"] = True
            return eager(*args, **kwargs)
        return forward

    for module in blocks:
        eager = module.forward  # the bound class method
        if id(module) in dynamic:
            compiled = _with_dynamic_channels(torch.compile(eager, backend=backend, dynamic=True))
        else:
            compiled = torch.compile(eager, backend=backend)
        module.forward = guarded(module, eager, compiled)
    return len(blocks)


def _with_dynamic_channels(compiled: Callable) -> Callable:
    """Call ``compiled`` with the channel count left symbolic: by default dynamo takes the shapes of
    parameters and buffers as constants, and BatchNorm's running mean then pins the input's channel
    count, so each dense layer (each has another) would compile a graph of its own. The switches
    apply only while these calls trace, not to other compiled code in the process."""
    config = torch._dynamo.config
    switches = {name: False for name in ("force_parameter_static_shapes", "force_nn_module_property_static_shapes")
                if hasattr(config, name)}
    return config.patch(**switches)(compiled) if switches else compiled


def compile_setting(model: torch.nn.Module, step: Callable, setting, *, distributed: bool = False) -> Callable:
    """Apply ``config.compile`` and return the step to call: True or "blocks" compiles the
    repeated blocks in place (`compile_blocks`) and returns ``step``; "step" compiles the whole
    step (`compile_step`; not under torchrun, where DDP wraps the step); False changes nothing."""
    if setting is True or setting == "blocks":
        compile_blocks(model)
        return step
    if setting == "step" and not distributed:
        return compile_step(step, True)
    return step
