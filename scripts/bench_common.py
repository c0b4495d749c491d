"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import time
from typing import Any

import torch


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def mnist_score_cells(scorer: Any, model: Any, steps: int, solver: str, guidance: float, num_images: int,
                      batch_size: int, replicates: int) -> tuple[str, float]:
    """('FID [95 % bootstrap interval] | accuracy | NFE', seconds per image) of `num_images` samples (seed 0) of a
    loaded pipeline (`fewstep.pipelines.loading.load_teacher`) on a uniform grid, scored on the mnist features."""
    from fewstep.metrics.resample import bootstrap_fd
    from fewstep.pipelines.scoring import generate_images
    from fewstep.samplers import get_schedule

    start = time.perf_counter()
    images, labels, nfe = generate_images(model, get_schedule("uniform", model.path, steps), solver, num_images,
                                          seed=0, batch_size=batch_size, guidance_scale=guidance)
    seconds = (time.perf_counter() - start) / num_images
    scores = scorer.score(images, labels)
    interval = bootstrap_fd(scorer.features(images), scorer.reference, replicates=replicates)
    return f"{scores.fid:.2f} [{interval.low:.2f}, {interval.high:.2f}] | {100 * scores.accuracy:.1f}% | {nfe}", seconds
