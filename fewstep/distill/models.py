"""Moved: the networks live in `fewstep.models` (`mlp`, `unet`); this module re-exports them for old imports."""

from fewstep.models.mlp import ClassConditionalMLP, MLPOutput
from fewstep.models.unet import small_unet

__all__ = ["ClassConditionalMLP", "MLPOutput", "small_unet"]
