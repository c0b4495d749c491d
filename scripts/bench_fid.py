"""Benchmark `fewstep fid` against torchmetrics and scipy/pytorch-fid, side by side in one run.

    python scripts/bench_fid.py                    # Frechet distance d=2048, n=1k and 10k; extraction
    python scripts/bench_fid.py --skip-extraction  # only the Frechet distance table
    python scripts/bench_fid.py --threads 1        # every BLAS / OpenMP pool limited to 1 thread

Prints the machine first (CPU model from /proc/cpuinfo, logical cores, torch threads, torch and
numpy versions, the command line, the load average before and after): absolute times mean little
on a shared machine, ratios measured interleaved in one run are what to quote.

1. Frechet distance, d = 2048, on synthetic Inception-like features (ReLU of correlated Gaussians
   with a decaying spectrum) at n = 1k (rank-deficient covariances) and 10k:
   - fewstep from statistics (`frechet_distance(mu, sigma, ...)`, as users call it: both
     covariances checked symmetric / PSD, then Cholesky + symmetric eigvalsh, or pivoted
     Cholesky + SVD of the low-rank factors when a covariance is singular);
   - fewstep with the features at hand, n <= d only (the low-rank path `fewstep fid` uses then);
   - torchmetrics (`_compute_fid`: eigvals of the non-symmetric S1 S2, float64);
   - scipy (`pytorch_fid.fid_score.calculate_frechet_distance`: scipy.linalg.sqrtm);
   - the floor: one float64 `torch.linalg.eigvalsh` of a d x d symmetric matrix, the least any
     eigenvalue-based exact method on d x d statistics must do (not an FD by itself).
   Methods run interleaved, `--repeats` times each (scipy once: it takes ~40 s); the table gives
   the best and the median time, and ratios of the best times (the least disturbed by other
   jobs on a shared machine); "rel. diff" is against fewstep.
2. Feature extraction throughput with the FID Inception-v3 architecture (random weights: the
   real ones cannot be downloaded here; the cost is the same), same batch size, CPU:
   fewstep's extractor + streaming statistics vs torchmetrics' `FrechetInceptionDistance.update`.
"""

from __future__ import annotations

import argparse
import os
import platform
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


FEWSTEP = "fewstep (statistics)"
FLOOR = "floor: one float64 eigvalsh, d x d"


def warm_up(methods: dict) -> None:
    """Load the LAPACK / MKL code paths once on small matrices so the first timed call is not a cold start."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import _compute_fid

    from fewstep.metrics.frechet import frechet_distance, frechet_distance_from_features

    x1, x2 = synthetic_features(48, 64, 1), synthetic_features(96, 64, 2)  # one rank-deficient side
    for a, b in ((x1, x2), (x2, x2 * 1.1)):
        args = (a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
        frechet_distance(*args)
        frechet_distance_from_features(a, b)
        _compute_fid(*args)
        calculate_frechet_distance(*(t.numpy() for t in args))
        torch.linalg.eigvalsh(args[3])


def bench_frechet(sizes: list[int], d: int, repeats: int) -> list[str]:
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import _compute_fid

    from fewstep.metrics.frechet import frechet_distance, frechet_distance_from_features

    rows = [
        "| n | method | best (s) | median (s) | best / fewstep (statistics) | best / floor | "
        "rel. diff vs fewstep (statistics) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        x1, x2 = synthetic_features(n, d, 1), synthetic_features(n, d, 2, scale=1.1)
        mu1, mu2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
        np_args = [a.numpy() for a in (mu1, s1, mu2, s2)]
        symmetric = (s2 + s2.T) / 2
        methods = {FEWSTEP: (lambda: frechet_distance(mu1, s1, mu2, s2), repeats)}
        if n <= d:  # what `fewstep fid` does when it holds the features: the exact low-rank path
            methods["fewstep (features, low-rank n x n)"] = (lambda: frechet_distance_from_features(x1, x2), repeats)
        methods["torchmetrics (eigvals of S1 S2)"] = (lambda: float(_compute_fid(mu1, s1, mu2, s2)), repeats)
        methods["scipy sqrtm (pytorch-fid)"] = (lambda: float(calculate_frechet_distance(*np_args)), 1)

        def floor() -> float:
            torch.linalg.eigvalsh(symmetric)
            return float("nan")

        methods[FLOOR] = (floor, repeats)
        warm_up(methods)
        results = {name: [] for name in methods}
        values = {}
        for round_ in range(max(r for _, r in methods.values())):  # interleave the methods
            for name, (fn, reps) in methods.items():
                if round_ < reps:
                    seconds, values[name] = timed(fn, 1)
                    results[name].append(seconds)
        base_time, floor_time = min(results[FEWSTEP]), min(results[FLOOR])
        base_value = values[FEWSTEP]
        for name, times in results.items():
            t = min(times)
            rel = "-" if name == FLOOR else f"{abs(values[name] - base_value) / abs(base_value):.1e}"
            rows.append(f"| {n} | {name} | {t:.3f} | {statistics.median(times):.3f} | {t / base_time:.2f}x | "
                        f"{t / floor_time:.2f}x | {rel} |")
        print(f"n={n}: " + ", ".join(f"{k}={v:.9g}" for k, v in values.items() if k != FLOOR) +
              "; times (s): " + ", ".join(f"{k}={[round(t, 3) for t in v]}" for k, v in results.items()),
              file=sys.stderr, flush=True)
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
        "fewstep (NCHW, torch-fidelity's layout)": lambda: run_fewstep(exact),
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


def machine() -> str:
    """CPU model, logical cores, threads, versions: one line for the benchmark table."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            fields = dict(line.split(":", 1) for line in file.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        model = f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"
    except (OSError, KeyError):
        pass
    pools = ""
    try:
        from threadpoolctl import threadpool_info

        pools = "; thread pools: " + ", ".join(
            f"{Path(info['filepath']).name} {info['num_threads']}" for info in threadpool_info())
    except ImportError:
        pass
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {np.__version__}, Python {platform.python_version()}{pools}")


def load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit torch and the numpy/scipy BLAS pools to this many threads")
    args = parser.parse_args()
    import scipy.linalg  # noqa: F401  (load scipy's own BLAS now, so the thread limit and report cover it)

    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            print("threadpoolctl missing: numpy / scipy BLAS threads not limited", file=sys.stderr)
    started = time.perf_counter()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min) before: {load_average()}\n", flush=True)
    print("\n".join(bench_frechet(args.sizes, args.dim, args.repeats)))
    if not args.skip_extraction:
        print()
        print("\n".join(bench_extraction(args.images, args.batch_size, args.image_size)))
    print(f"\nload average (1, 5, 15 min) after: {load_average()}; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
