"""fewstep.models: one home for every network class, old import paths kept, every shipped asset loads."""

import ast
import json
from pathlib import Path

import pytest
import torch

import fewstep
import fewstep.models
from fewstep.io import assets_dir
from fewstep.models import ClassConditionalMLP, MaskedDiffusionTransformer, MnistClassifier, model_fingerprint


def _fewstep_imports(source: Path) -> set[str]:
    """The fewstep modules a source file imports (absolute and relative imports)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("fewstep.models." * (node.level == 1) + "fewstep." * (node.level == 2) + (node.module or ""))
    return {name for name in names if name.startswith("fewstep")}


def test_models_import_nothing_above_them():
    """models may use diffusers and samplers (and fewstep.io), never data / metrics / pipelines / distill / commands."""
    allowed = ("fewstep.models", "fewstep.samplers", "fewstep.io")
    for source in sorted(Path(fewstep.models.__file__).parent.glob("*.py")):
        imports = _fewstep_imports(source)
        assert all(name.startswith(allowed) for name in imports), (source.name, imports)


def test_old_import_paths_resolve_to_the_same_classes():
    import fewstep.distill.masked_transformer as old_transformer
    import fewstep.distill.models as old_models
    import fewstep.pipelines.class_conditional as pipeline_module  # named by pipelines saved before the move

    assert fewstep.ClassConditionalMLP is old_models.ClassConditionalMLP is pipeline_module.ClassConditionalMLP
    assert fewstep.ClassConditionalMLP is ClassConditionalMLP
    assert old_transformer.MaskedDiffusionTransformer is MaskedDiffusionTransformer
    assert old_transformer.model_fingerprint is model_fingerprint


@pytest.mark.parametrize("name", ["mixture_flow", "mixture_vp", "mnist_flow", "mnist_vp"])
def test_every_shipped_teacher_loads(name):
    from diffusers import UNet2DModel

    from fewstep.pipelines.loading import load_teacher

    teacher = load_teacher(assets_dir() / "teachers" / name)
    expected = ClassConditionalMLP if name.startswith("mixture") else UNet2DModel
    assert type(teacher.network) is expected
    x = torch.randn(2, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    labels = teacher.class_labels(2)
    with torch.no_grad():
        x0 = teacher.denoiser(x, torch.tensor(0.5, dtype=torch.float64), **labels)
        # independently: the raw network output at t = 0.5, converted with the shipped scheduler's own schedule
        config = teacher.scheduler_config
        if teacher.path.kind == "flow":  # x_t = (1 - t) x0 + t eps, the network predicts eps - x0 at t * N
            raw = teacher.network(x, torch.full((2,), 500.0), **labels).sample
            expected_x0 = x - 0.5 * raw
        else:  # DDPM timestep 499 is t = 0.5; alpha_bar from diffusers' DDPMScheduler with the shipped betas
            from diffusers import DDPMScheduler

            abar = DDPMScheduler.from_config(config).alphas_cumprod[499].double()
            raw = teacher.network(x, torch.full((2,), 499), **labels).sample.double()
            a, s = abar.sqrt(), (1 - abar).sqrt()
            expected_x0 = a * x - s * raw if config["prediction_type"] == "v_prediction" else (x - s * raw) / a
    torch.testing.assert_close(x0.double(), expected_x0.double(), rtol=1e-4, atol=1e-5)
    assert float(x0.std()) > 0.05  # a real prediction, not a constant


def test_shipped_text_model_and_classifier_load():
    from fewstep.metrics.mnist import load_mnist_classifier

    folder = assets_dir() / "teachers" / "text_masked"
    model = MaskedDiffusionTransformer.from_pretrained(folder).eval()
    # the fingerprint recorded when the model was trained still identifies the loaded weights
    assert model_fingerprint(model) == json.loads((folder / "data.json").read_text())["model_id"]
    assert type(load_mnist_classifier()) is MnistClassifier
