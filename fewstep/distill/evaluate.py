"""Teacher quality checks: mixture statistics for 2-D teachers, classifier accuracy for MNIST teachers.

    python -m fewstep.distill.evaluate assets/teachers/mnist_flow --steps 100 --per-class 50
    python -m fewstep.distill.evaluate assets/teachers/mixture_flow --mixture 8gaussians

`mnist_eval_fn(...)` is an `eval_fn` for `fewstep.distill.loop.train` (label accuracy of
samples during training).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch
from torch import Tensor


def _labels(num_classes: int, per_class: int) -> Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def mixture_report(pipe: Any, mixture: str = "8gaussians", per_class: int = 500, steps: int = 50, seed: int = 0) -> dict[str, float]:
    """Per-class sample mean error vs the true component means and the mean per-axis std (true: the mixture std)."""
    from fewstep.data import component_labels, mixture_parameters

    params, comp = mixture_parameters(mixture), component_labels(mixture)
    num_classes = int(comp.max()) + 1
    labels = _labels(num_classes, per_class)
    x = torch.as_tensor(pipe(class_labels=labels, num_inference_steps=steps, output_type="pt",
                             generator=torch.Generator().manual_seed(seed)).images).double()
    errors, stds = [], []
    for k in range(num_classes):
        members = comp == k  # a class may hold several components: compare with their weighted mean
        w = params["weights"][members] / params["weights"][members].sum()
        true_mean = (w[:, None] * params["means"][members]).sum(0)
        errors.append(float(torch.linalg.norm(x[labels == k].mean(0) - true_mean)))
        stds.append(float(x[labels == k].std(0).mean()))
    return {"max_class_mean_error": max(errors), "mean_class_std": sum(stds) / len(stds), "steps": steps}


def class_moments(mixture: str, k: int) -> tuple[Tensor, Tensor]:
    """Exact mean [2] and covariance [2, 2] of class k of `mixture` (its components' weighted mixture), float64."""
    from fewstep.data import component_labels, mixture_parameters

    params, comp = mixture_parameters(mixture), component_labels(mixture)
    members = comp == k
    w = (params["weights"][members] / params["weights"][members].sum()).double()
    means = params["means"][members].double()
    covs = params["covs"][members].double() if "covs" in params else torch.diag_embed(params["stds"][members].double() ** 2)
    mean = (w[:, None] * means).sum(0)
    centred = means - mean
    cov = (w[:, None, None] * (covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    return mean, cov


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2 E|x - y| - E|x - x'| - E|y - y'| between samples x [N, D] and y [M, D] (V-statistic)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mixture_sample_report(x: Tensor, labels: Tensor, mixture: str = "8gaussians", seed: int = 0) -> dict[str, float]:
    """Per-class mean / covariance errors of samples x [N, 2] against the exact mixture, and the energy distance.

    `mean_error` / `cov_error`: the mean over classes of |mean - true mean| and ||cov - true cov||_F;
    `energy_distance`: the mean over classes of the energy distance to as many exact samples of the class.
    """
    from fewstep.data import sample_mixture

    generator = torch.Generator().manual_seed(seed + 12345)
    exact, exact_labels = sample_mixture(mixture, 20 * x.shape[0], generator=generator)
    mean_errors, cov_errors, energies = [], [], []
    for k in sorted(set(labels.tolist())):
        rows = x[labels == k].double()
        mean, cov = class_moments(mixture, k)
        mean_errors.append(float(torch.linalg.norm(rows.mean(0) - mean)))
        cov_errors.append(float(torch.linalg.norm(torch.cov(rows.T) - cov)))
        energies.append(energy_distance(rows, exact[exact_labels == k][: rows.shape[0]]))
    count = len(mean_errors)
    return {"mean_error": sum(mean_errors) / count, "max_mean_error": max(mean_errors), "cov_error": sum(cov_errors) / count,
            "energy_distance": sum(energies) / count}


@torch.no_grad()
def straightness(denoiser: Any, noise: Tensor, steps: int = 32, **cond: Any) -> float:
    """Straightness of a flow (Liu et al. 2023): S = int_0^1 E ||(z - x_end) - v(x_t, t)||^2 dt along its own solve.

    `denoiser` is an x0-predictor on a rectified-flow path (`Denoiser(network, path, prediction_type)`);
    the flow is integrated from `noise` z [B, ...] with `steps` Euler steps on a uniform grid, and its
    velocity v = (x_t - x0_hat) / t at each step is compared with the straight line from z to the
    endpoint (mean over coordinates; 0 for a flow that moves on straight lines at constant speed).
    """
    from fewstep.samplers import get_schedule, sample

    ts = get_schedule("uniform", denoiser.path, steps)
    state, velocities = [noise.float()], []

    def record(info: Any) -> None:  # after step i: state[-1] was x(t_i), x0_hat its prediction
        velocities.append((state[-1] - info.x0_hat) / info.t)
        state.append(info.x)

    end = sample(denoiser, noise.float(), ts, "ddim", callback=record, **cond).x
    line = noise.float() - end
    dts = (ts[:-1] - ts[1:]).tolist()
    return float(sum(dt * (line - v).pow(2).mean() for dt, v in zip(dts, velocities)))


@torch.no_grad()
def mnist_label_accuracy(images: Tensor, labels: Tensor, classifier: Any | None = None) -> float:
    """Fraction of images [N, 1, 32, 32] in [-1, 1] that the shipped MNIST classifier labels as `labels`."""
    from fewstep.metrics.mnist import classifier_accuracy, load_mnist_classifier

    classifier = classifier or load_mnist_classifier()
    return classifier_accuracy(classifier, images.float().cpu().clamp(-1, 1), labels.cpu())


def mnist_pipeline_accuracy(pipe: Any, per_class: int = 50, steps: int = 100, guidance_scale: float = 1.0, seed: int = 0) -> float:
    """Label accuracy of `per_class` pipeline samples per digit at `steps` scheduler steps."""
    labels = _labels(10, per_class)
    images = pipe(class_labels=labels, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
                  generator=torch.Generator().manual_seed(seed)).images
    return mnist_label_accuracy(images * 2 - 1, labels)


def mnist_eval_fn(per_class: int = 10) -> Callable[[Callable[[Tensor], Tensor], int], dict[str, float]]:
    """An `eval_fn` for the loop: MNIST classifier accuracy of `per_class` samples per digit."""
    from fewstep.metrics.mnist import load_mnist_classifier

    classifier = load_mnist_classifier()

    def evaluate(sample_fn: Callable[[Tensor], Tensor], step: int) -> dict[str, float]:
        labels = _labels(10, per_class)
        return {"label_accuracy": mnist_label_accuracy(sample_fn(labels), labels, classifier)}

    return evaluate


def main(argv: list[str] | None = None) -> int:
    """Print a teacher pipeline's quality numbers as JSON."""
    from diffusers import DiffusionPipeline

    import fewstep.pipelines.class_conditional  # noqa: F401  (registers the pipeline with diffusers)

    parser = argparse.ArgumentParser(description="quality of a ClassConditionalPipeline teacher")
    parser.add_argument("pipeline", help="a saved pipeline folder (assets/teachers/NAME or run_dir/pipeline)")
    parser.add_argument("--mixture", default=None, help="2-D teachers: the mixture name (8gaussians, moons)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0)
    args = parser.parse_args(argv)
    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    if args.mixture:
        report: dict[str, Any] = mixture_report(pipe, args.mixture, args.per_class, args.steps)
    else:
        report = {"label_accuracy": mnist_pipeline_accuracy(pipe, args.per_class, args.steps, args.guidance),
                  "steps": args.steps, "per_class": args.per_class, "guidance_scale": args.guidance}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["scheduler"] = type(pipe.scheduler).__name__
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
