"""cxrlib: a thin library behind the notebooks that reproduce Qiu, Rivaz & Xiao (arXiv:2403.16970).

Joint chest X-ray diagnosis (Normal / CHF / Pneumonia) and radiologist gaze-saliency prediction
with a dual-encoder multi-task UNet trained by multi-stage cooperative learning.
"""

from cxrlib.runtime import default_device, environment_report, seed_everything

__version__ = "0.1.0"
CLASS_NAMES = ("Normal", "CHF", "Pneumonia")

__all__ = ["CLASS_NAMES", "default_device", "environment_report", "seed_everything", "__version__"]
