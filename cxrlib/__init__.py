"""cxrlib: a thin library behind the notebooks that reproduce Qiu, Rivaz & Xiao (arXiv:2403.16970).

Joint chest X-ray diagnosis (Normal / CHF / Pneumonia) and radiologist gaze-saliency prediction
with a dual-encoder multi-task UNet trained by multi-stage cooperative learning.

Layers, each importing only the ones above it in this list:

- ``paths``, ``runfolder``, ``runtime``: the repository, the run folder's files and locks, devices
- ``config``: settings without torch (stage configs, profiles, variants, parameter checks)
- ``data``, ``synthetic``: the EGD-CXR / REFLACX readers and the synthetic sets in their format
- ``model``, ``losses``, ``metrics``: the networks, the losses, the scores
- ``training``: the stage registry, the steps, the Trainer, checkpoints
- ``evaluation``, ``explain``, ``plots``, ``diagram``: scoring, CAMs and figures of a trained run
- ``bench``, ``run``, ``colab``, ``cli``: benchmarks, headless runs, the notebooks' set-up, commands

Importing ``cxrlib`` loads nothing heavy: ``seed_everything`` and friends load torch on first use.
"""

__version__ = "0.1.0"
CLASS_NAMES = ("Normal", "CHF", "Pneumonia")

_FROM_RUNTIME = ("default_device", "environment_report", "seed_everything")

__all__ = ["CLASS_NAMES", "__version__", *_FROM_RUNTIME]


def __getattr__(name):
    if name in _FROM_RUNTIME:  # torch loads here, on first use, not on ``import cxrlib``
        from cxrlib import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'cxrlib' has no attribute {name!r}")
