"""Learned continuous samplers (issue 6, continuous part); prints Markdown for docs/BENCHMARKS.md.

    python scripts/bench_learned.py --part mixture    # 16-D analytic mixture, VP and flow (~10 min, 2 CPU cores)
    python scripts/bench_learned.py --part mnist      # shipped MNIST flow teacher, FID on `mnist` features

Mixture: RMS error against the exact ODE endpoint on 256 held-out noises, for the best
analytic DPM-Solver++(2M) grid, the BOSS-for-2M grid, the learned grid (LD3-like) and learned
grid + weights (LSD+-like), beside the best of diffusers' DPMSolverMultistep / UniPC / DEIS on
the same model and noise; the last learned row also decouples each step's model evaluation time
from the grid (LD3, Tong et al. 2024). Students are fitted to a 200-step DPM-Solver++(3M) teacher on 2048
training noises (a quarter held back for validation; 600 Adam iterations, batch 128). Each
learned row tries DPM-Solver++(2M) and (3M) bases, each started from the best analytic grid
and from the logSNR grid, and keeps the candidate with the lowest *validation* error (never
the test error).
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep.io import describe_machine
from fewstep.samplers import get_schedule, get_solver, sample
from fewstep.samplers.boss import boss_schedule
from fewstep.samplers.evaluation import benchmark_mixture, benchmark_path, exact_endpoint, rmse
from fewstep.samplers.learned import fit_sampler, teacher_outputs

NFES = [3, 4, 5, 6, 8, 10]
#: (row label, fit_sampler `learn`, learn_eval_times)
LEARNED_ROWS = [("learned grid (LD3-like)", "grid", False), ("learned grid + weights (LSD+-like)", "both", False),
                ("learned grid + weights + evaluation times (LD3 decoupling)", "both", True)]


def best_diffusers(kind: str, model, noise: torch.Tensor, target: torch.Tensor, nfe: int) -> tuple[str, float]:
    import importlib

    bench = importlib.import_module("bench_solvers")
    results = {}
    model32 = lambda x, t: model(x.double(), t).float()  # noqa: E731
    for name, scheduler in bench.diffusers_peers(kind).items():
        results[name] = rmse(bench.run_scheduler(scheduler, model32, noise.float(), bench.steps_within(scheduler, nfe))[0], target)
    name = min(results, key=results.get)
    return name.replace("diffusers ", ""), results[name]


def mixture_part(iterations: int) -> str:
    out = []
    for kind in ["vp", "flow"]:
        path, mixture = benchmark_path(kind), benchmark_mixture()
        denoiser = mixture.denoiser(path)
        model = mixture.model(path, "epsilon" if kind == "vp" else "flow_prediction")
        train = torch.randn(2048, mixture.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        test = torch.randn(256, mixture.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        targets, test_target = teacher_outputs(denoiser, train, 200), exact_endpoint(denoiser, test)
        fine = get_schedule("uniform", path, 100)
        rows: dict[str, dict[int, str]] = {}
        fit_seconds = []
        for nfe in NFES:
            analytic = {s: rmse(sample(denoiser, test, get_schedule(s, path, nfe), "dpmpp_2m").x, test_target)
                        for s in ["uniform", "logsnr", "quadratic", "karras"]}
            best_schedule = min(analytic, key=analytic.get)
            rows.setdefault("DPM-Solver++(2M), best analytic grid", {})[nfe] = f"{analytic[best_schedule]:.3f} ({best_schedule})"
            boss = boss_schedule(denoiser, [train[:256]], nfe, fine, step_rule="dpmpp_2m")
            rows.setdefault("DPM-Solver++(2M), BOSS-for-2M grid", {})[nfe] = f"{rmse(sample(denoiser, test, boss.ts, 'dpmpp_2m').x, test_target):.3f}"
            for label, learn, eval_times in LEARNED_ROWS:
                start = time.perf_counter()
                candidates = []
                for solver in ["dpmpp_2m", "dpmpp_3m"]:
                    for init in dict.fromkeys([best_schedule, "logsnr"]):
                        _, history = fit_sampler(denoiser, nfe, train, targets, solver=solver, learn=learn, init_schedule=init,
                                                 iterations=iterations, batch_size=128, heldout=(test, test_target),
                                                 learn_eval_times=eval_times)
                        candidates.append((history.validation_error, history.heldout_after, f"{solver[-2:].upper()}, {init}"))
                fit_seconds.append((time.perf_counter() - start) / len(candidates))
                _, test_error, chosen = min(candidates)
                rows.setdefault(label, {})[nfe] = f"{test_error:.3f} ({chosen})"
            peer, peer_err = best_diffusers(kind, model, test, test_target, nfe)
            rows.setdefault("best diffusers scheduler", {})[nfe] = f"{peer_err:.3f} ({peer.split('(')[0]})"
            for label, _, _ in LEARNED_ROWS[1:]:
                learned = float(rows[label][nfe].split()[0])
                rows.setdefault(f"**best diffusers / {label.split(' (')[0]}**", {})[nfe] = f"{peer_err / learned:.2f}x"
            print(kind, nfe, {k: v[nfe] for k, v in rows.items()}, flush=True)
        out.append(f"\n#### {kind}: RMS error vs exact ODE endpoint, 256 held-out noises\n")
        out.append("| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
        out.append("|---|" + "---|" * len(NFES))
        out += [f"| {label} | " + " | ".join(cells[n] for n in NFES) + " |" for label, cells in rows.items()]
        out.append(f"\nFitting time per sampler: {min(fit_seconds):.0f}-{max(fit_seconds):.0f} s ({iterations} iterations).")
    return "\n".join(out)


MNIST_VARIANTS = {"grid": ("grid", False), "both": ("both", False), "grid+eval": ("grid", True),
                  "both+eval": ("both", True)}


def mnist_part(iterations: int, num_images: int, variants: list[str]) -> str:
    from fewstep.pipelines.loading import load_teacher
    from fewstep.io import assets_dir
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.scoring import generate_images, rms_pixel_error

    teacher = load_teacher(assets_dir() / "teachers" / "mnist_flow")
    scorer = MnistScorer()
    reference_ts = get_schedule("uniform", teacher.path, 32)
    ref_images, labels, _ = generate_images(teacher, reference_ts, "dpmpp_3m", num_images, seed=0)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn((256, *teacher.sample_shape), generator=g)
    cond = teacher.class_labels(256)
    targets = teacher_outputs(teacher.denoiser, noise, 32, teacher_solver="dpmpp_3m", **cond)
    lines = [f"\nmnist_flow teacher, no guidance, {num_images} images (FID_{num_images} on mnist features; RMS "
             "pixel error vs the 32-step DPM-Solver++(3M) samples from the same noise)\n",
             "| NFE | sampler | FID | accuracy | RMS vs reference | fit time |", "|---|---|---|---|---|---|"]
    ref_scores = scorer.score(ref_images, labels)
    lines.append(f"| 32 | DPM-Solver++(3M) reference | {ref_scores.fid:.2f} | {100 * ref_scores.accuracy:.1f}% | 0 | |")
    for nfe in [3, 4, 6]:
        candidates = {"DPM-Solver++(2M), uniform": ({"ts": get_schedule("uniform", teacher.path, nfe), "solver": "dpmpp_2m"}, "")}
        for variant in variants:
            learn, eval_times = MNIST_VARIANTS[variant]
            start = time.perf_counter()
            spec, _ = fit_sampler(teacher.denoiser, nfe, noise, targets, learn=learn, init_schedule="uniform",
                                  iterations=iterations, batch_size=32, cond=cond, learn_eval_times=eval_times)
            candidates[f"learned {variant}"] = (spec.sample_args(), f"{time.perf_counter() - start:.0f} s")
        for label, (sampler, fit_time) in candidates.items():
            images, labels, _ = generate_images(teacher, num_images=num_images, seed=0, **sampler)
            scores = scorer.score(images, labels)
            err = rms_pixel_error(images, ref_images)
            lines.append(f"| {nfe} | {label} | {scores.fid:.2f} | {100 * scores.accuracy:.1f}% | {err:.3f} | {fit_time} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["mixture", "mnist"], default="mixture")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--mnist-variants", nargs="+", choices=list(MNIST_VARIANTS), default=list(MNIST_VARIANTS))
    args = parser.parse_args()
    print(f"Machine: {describe_machine()}\n")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    print(mixture_part(args.iterations) if args.part == "mixture" else mnist_part(args.iterations, args.images, args.mnist_variants))


if __name__ == "__main__":
    main()
