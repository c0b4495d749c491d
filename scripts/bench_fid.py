"""Benchmark `fewstep fid` against torchmetrics and scipy/pytorch-fid, side by side in one run.

    python scripts/bench_fid.py                    # Frechet distance d=2048, n=1k and 10k; extraction
    python scripts/bench_fid.py --skip-extraction  # only the Frechet distance table

1. Frechet distance, d = 2048, on synthetic Inception-like features (ReLU of correlated Gaussians
   with a decaying spectrum) at n = 1k (rank-deficient covariances) and 10k:
   - fewstep from statistics (`frechet_distance(mu, sigma, ...)`: Cholesky or eigh factor +
     symmetric eigvalsh);
   - fewstep with the features at hand, n <= d only (the low-rank path `fewstep fid` uses then);
   - torchmetrics (`_compute_fid`: eigvals of the non-symmetric S1 S2, float64);
   - scipy (`pytorch_fid.fid_score.calculate_frechet_distance`: scipy.linalg.sqrtm).
   Ratios are of median times, measured interleaved in this run; "rel. diff" is against fewstep.
2. Feature extraction throughput with the FID Inception-v3 architecture (random weights: the
   real ones cannot be downloaded here; the cost is the same), same batch size, CPU:
   fewstep's extractor + streaming statistics vs torchmetrics' `FrechetInceptionDistance.update`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_features(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """ReLU of correlated Gaussians with a power-law spectrum: (n, d) float64, Inception-like."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    spectrum = torch.arange(1, d + 1, dtype=torch.float64) ** -0.8
    z = torch.randn(n, d, generator=generator, dtype=torch.float64) * spectrum.sqrt() * scale
    return (z @ basis.T * 3 + 0.2).relu()


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, value) of `fn()` over `repeats` runs."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def bench_frechet(sizes: list[int], d: int, repeats: int) -> list[str]:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import _compute_fid

    from fewstep.metrics.frechet import frechet_distance, frechet_distance_from_features

    rows = [
        "| n | method | time (s) | time / fewstep (statistics) | rel. diff vs fewstep (statistics) |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        x1, x2 = synthetic_features(n, d, 1), synthetic_features(n, d, 2, scale=1.1)
        mu1, mu2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
        np_args = [a.numpy() for a in (mu1, s1, mu2, s2)]
        methods = {"fewstep (statistics)": (lambda: frechet_distance(mu1, s1, mu2, s2), repeats)}
        if n <= d:  # what `fewstep fid` does when it holds the features: the exact low-rank path
            methods["fewstep (features, low-rank n x n)"] = (lambda: frechet_distance_from_features(x1, x2), repeats)
        methods["torchmetrics (eigvals of S1 S2)"] = (lambda: float(_compute_fid(mu1, s1, mu2, s2)), repeats)
        methods["scipy sqrtm (pytorch-fid)"] = (lambda: float(calculate_frechet_distance(*np_args)), 1)
        results = {name: [] for name in methods}
        values = {}
        for round_ in range(max(r for _, r in methods.values())):  # interleave the methods
            for name, (fn, reps) in methods.items():
                if round_ < reps:
                    seconds, values[name] = timed(fn, 1)
                    results[name].append(seconds)
        base_time = statistics.median(results["fewstep (statistics)"])
        base_value = values["fewstep (statistics)"]
        for name, times in results.items():
            t = statistics.median(times)
            rel = abs(values[name] - base_value) / abs(base_value)
            rows.append(f"| {n} | {name} | {t:.3f} | {t / base_time:.1f}x | {rel:.1e} |")
        print(f"n={n}: " + ", ".join(f"{k}={v:.9g}" for k, v in values.items()), file=sys.stderr)
    return rows


def bench_extraction(num_images: int, batch_size: int, image_size: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
    from fid_helpers import random_inception_state_dict
    from torchmetrics.image.fid import FrechetInceptionDistance

    from fewstep.metrics.inception import inception_features
    from fewstep.metrics.stats import StatsAccumulator

    weights = Path(tempfile.mkdtemp()) / "random-inception.pth"
    torch.save(random_inception_state_dict(), weights)
    images = torch.randint(0, 256, (num_images, 3, image_size, image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    batches = images.split(batch_size)

    def run_fewstep(extractor) -> None:
        accumulator = StatsAccumulator()
        with torch.no_grad():
            for batch in batches:
                accumulator.update(extractor(batch))

    def run_torchmetrics(antialias: bool) -> None:
        metric = FrechetInceptionDistance(feature=2048, antialias=antialias, feature_extractor_weights_path=str(weights))
        for batch in batches:
            metric.update(batch, real=True)

    fast = inception_features(weights=str(weights))
    exact = inception_features(weights=str(weights), channels_last=False)
    methods = {
        "fewstep (channels_last, default)": lambda: run_fewstep(fast),
        "fewstep (NCHW, bit-exact with torch-fidelity)": lambda: run_fewstep(exact),
        "torchmetrics FID update, antialias=False (same protocol)": lambda: run_torchmetrics(False),
        "torchmetrics FID update, antialias=True (its default)": lambda: run_torchmetrics(True),
    }
    run_fewstep(fast)  # warm-up (oneDNN primitive caches)
    times = {name: [] for name in methods}
    for _ in range(2):
        for name, fn in methods.items():
            times[name].append(timed(fn, 1)[0])
    reference = statistics.median(times["torchmetrics FID update, antialias=False (same protocol)"])
    rows = [
        f"| method ({num_images} images {image_size}x{image_size}, batch {batch_size}, "
        f"{torch.get_num_threads()} threads) | images/s | throughput vs torchmetrics (same protocol) |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        t = statistics.median(values)
        rows.append(f"| {name} | {num_images / t:.2f} | {reference / t:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--skip-extraction", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}\n")
    print("\n".join(bench_frechet(args.sizes, args.dim, args.repeats)))
    if not args.skip_extraction:
        print()
        print("\n".join(bench_extraction(args.images, args.batch_size, args.image_size)))


if __name__ == "__main__":
    main()
