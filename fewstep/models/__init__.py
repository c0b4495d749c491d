"""Every network class of fewstep: teachers, students, critics and feature networks.

Diffusers models where one fits (`small_unet` builds a `UNet2DModel`), fewstep's own
`ModelMixin` / `ConfigMixin` subclasses where none does, so all of them save and load the
diffusers way (`save_pretrained` / `from_pretrained`, safetensors). One module per family:

- `mlp`: `ClassConditionalMLP`, the residual MLP of the 2-D mixture teachers;
- `unet`: `small_unet`, CPU-sized class-conditional `UNet2DModel`s (MNIST teachers);
- `masked_transformer`: `MaskedDiffusionTransformer` for masked (absorbing) text diffusion,
  and `model_fingerprint`, the model id recorded in its sampler specs;
- `mnist_classifier`: `MnistClassifier`, the feature network of the `mnist` FID extractor;
- `multi_student`: `MultiStudentModel`, K students behind a class -> student routing table (MSD).

This package needs torch and diffusers (and may use `fewstep.samplers`); it never imports the
metrics, pipelines, distill or commands layers, which all build on it.
"""

from .masked_transformer import MaskedDiffusionTransformer, MaskedTransformerOutput, model_fingerprint
from .mlp import ClassConditionalMLP, MLPOutput
from .mnist_classifier import MnistClassifier
from .multi_student import MultiStudentModel, MultiStudentOutput
from .unet import small_unet

__all__ = [
    "ClassConditionalMLP", "MLPOutput", "MaskedDiffusionTransformer", "MaskedTransformerOutput", "MnistClassifier",
    "MultiStudentModel", "MultiStudentOutput", "model_fingerprint", "small_unet",
]
