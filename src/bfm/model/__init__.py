"""The BFM model: Perceiver IO encoder -> Swin3D U-Net -> Perceiver IO decoder.

See docs/architecture.md ("Model")."""

from bfm.model.bfm import BFM, count_parameters
from bfm.model.config import BACKBONES, ModelConfig
from bfm.model.loss import LossKind, masked_loss
from bfm.model.presets import PRESETS, build_config

__all__ = [
    "BACKBONES",
    "BFM",
    "PRESETS",
    "ModelConfig",
    "build_config",
    "count_parameters",
    "LossKind",
    "masked_loss",
]
