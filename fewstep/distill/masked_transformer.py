"""Moved: the masked-diffusion transformer lives in `fewstep.models.masked_transformer`; re-exported here for old imports."""

from fewstep.models.masked_transformer import MaskedDiffusionTransformer, MaskedTransformerOutput, model_fingerprint

__all__ = ["MaskedDiffusionTransformer", "MaskedTransformerOutput", "model_fingerprint"]
