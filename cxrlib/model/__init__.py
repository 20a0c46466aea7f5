"""The networks (docs/method.md section 2), in four files:

* :mod:`cxrlib.model.blocks`: Conv-BN-ReLU, UNet, residual and SE blocks, encoder/decoder, heads,
  activation checkpointing;
* :mod:`cxrlib.model.densenet`: encoder A, a torchvision DenseNet with offline-safe ImageNet weights;
* :mod:`cxrlib.model.networks`: ``DualEncoderMTUNet``, the baselines, ``build_model``, the
  parameter table and ``predicted_maps`` (a model's outputs -> its predicted gaze maps);
* :mod:`cxrlib.model.freeze`: which parts train in a stage (``set_trainable``, ``set_modes``).
"""

from cxrlib.model.blocks import (ConvBNReLU, DoubleConv, FusionClassifier, ResidualBlock, ResSEBlock,
                                 SaliencyHead, SEBlock, UNetDecoder, UNetEncoder, Up,
                                 set_activation_checkpointing)
from cxrlib.model.densenet import DenseNetEncoder
from cxrlib.model.freeze import set_modes, set_trainable
from cxrlib.model.networks import (MODEL_NAMES, DenseNetClassifier, DualEncoderMTUNet, MTUNet, ResSEUNet,
                                   build_model, format_parameter_table, parameter_table, predicted_maps)

__all__ = [
    "ConvBNReLU", "DoubleConv", "ResidualBlock", "SEBlock", "ResSEBlock", "Up", "UNetEncoder",
    "UNetDecoder", "SaliencyHead", "FusionClassifier", "DenseNetEncoder", "DualEncoderMTUNet",
    "MTUNet", "ResSEUNet", "DenseNetClassifier", "MODEL_NAMES", "build_model", "parameter_table",
    "format_parameter_table", "predicted_maps", "set_activation_checkpointing", "set_trainable", "set_modes",
]
