"""Benchmark for the sampling engine (issue 2); prints Markdown tables for docs/BENCHMARKS.md.

    python scripts/bench_solvers.py                 # everything (about 5 minutes on 2 CPU cores)
    python scripts/bench_solvers.py --part errors   # only the error-vs-NFE tables
    python scripts/bench_solvers.py --part mnist    # shipped MNIST teachers at NFE 4/6/8 (FID, RMS to reference)

Parts:
  errors  RMS error vs the exact ODE endpoint on the analytic 16-D mixture, every fewstep
          solver x schedule, beside diffusers' DPMSolverMultistep, UniPC and DEIS on the same
          model (MixtureModel, which sees the schedulers' own timesteps) and the same noise.
  step    FewStepScheduler.step vs DPMSolverMultistepScheduler.step, same settings (ratio).
  unet    share of sampling wall time spent outside the model for a small UNet2DModel.
  mnist   the shipped MNIST teachers (guidance 2, as the demo): FID on the mnist features, label
          accuracy and RMS pixel error to a 32-step DPM-Solver++(3M) run from the same noise, at
          NFE 4/6/8, for the main solvers and the shipped learned grids (assets/specs). fewstep's
          dpmpp_2m/3m and unipc rows equal diffusers' DPMSolverMultistep / UniPCMultistep on the
          same grid (parity tests), so they stand for those schedulers too.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from diffusers import (
    DEISMultistepScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler, UNet2DModel, UniPCMultistepScheduler,
)

from fewstep.io import describe_machine
from fewstep import FewStepScheduler
from fewstep.samplers import available_solvers
from fewstep.samplers.evaluation import benchmark_mixture, benchmark_path, exact_endpoint, rmse, solver_errors

NFES = [3, 5, 8, 10, 15, 20]
SCHEDULES = ["uniform", "logsnr", "karras", "quadratic", "flow_shift"]


def diffusers_peers(kind: str) -> dict[str, object]:
    """diffusers schedulers configured for the benchmark path (2nd order, their defaults otherwise)."""
    if kind == "vp":
        common = dict(prediction_type="epsilon")
    else:
        common = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0)
    peers = {
        "diffusers DPMSolverMultistep(2M)": DPMSolverMultistepScheduler(**common),
        "diffusers DPMSolverMultistep(3M)": DPMSolverMultistepScheduler(solver_order=3, **common),
        "diffusers UniPC(bh2, order 2)": UniPCMultistepScheduler(**common),
        "diffusers UniPC(bh2, order 3)": UniPCMultistepScheduler(solver_order=3, **common),
        "diffusers DEIS(order 2)": DEISMultistepScheduler(**common),
    }
    if kind == "vp":
        peers["diffusers Euler"] = EulerDiscreteScheduler(prediction_type="epsilon")
        peers["diffusers Heun"] = HeunDiscreteScheduler(prediction_type="epsilon")
    else:
        peers["diffusers FlowMatchEuler"] = FlowMatchEulerDiscreteScheduler(shift=1.0)
        peers["diffusers FlowMatchHeun"] = FlowMatchHeunDiscreteScheduler(shift=1.0)
    return peers


def steps_within(scheduler, nfe: int) -> int:
    """The most steps whose model evaluations fit the budget (Heun: 2 per step, 1 on the last)."""
    return (nfe + 1) // 2 if "Heun" in type(scheduler).__name__ else nfe


def run_scheduler(scheduler, model, x: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, int]:
    """The standard diffusers loop (init_noise_sigma, scale_model_input); returns (sample, model evaluations)."""
    scheduler.set_timesteps(num_steps)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers start from plain noise
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    for t in scheduler.timesteps:
        x = scheduler.step(model(scale(x, t), t), t, x).prev_sample
    return x, len(scheduler.timesteps)


def error_tables(num_samples: int) -> str:
    out = []
    for kind in ["vp", "flow"]:
        rows = solver_errors(kind, available_solvers(), SCHEDULES, NFES, num_samples=num_samples)
        table: dict[str, dict[int, float]] = defaultdict(dict)
        for r in rows:
            table[f"fewstep {r.solver} / {r.schedule}"][r.nfe_budget] = (r.rmse, r.nfe)
        path = benchmark_path(kind)
        mixture = benchmark_mixture()
        model = mixture.model(path, "epsilon" if kind == "vp" else "flow_prediction")
        noise = torch.randn(num_samples, mixture.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        target = exact_endpoint(mixture.denoiser(path), noise)
        model32 = lambda x, t: model(x.double(), t).float()  # noqa: E731
        for name, scheduler in diffusers_peers(kind).items():
            for n in NFES:
                out_x, nfe = run_scheduler(scheduler, model32, noise.float(), steps_within(scheduler, n))
                table[name][n] = (rmse(out_x, target), nfe)
        best_peer = {n: min(v[n][0] for k, v in table.items() if k.startswith("diffusers")) for n in NFES}
        best_ours = {n: min(v[n][0] for k, v in table.items() if k.startswith("fewstep") and "sde" not in k) for n in NFES}
        out.append(f"\n#### {kind}: RMS error vs exact ODE endpoint (actual NFE when below budget)\n")
        out.append("| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
        out.append("|---|" + "---|" * len(NFES))
        for name, cells in table.items():
            text = " | ".join(
                f"{cells[n][0]:.2e}" + (f" ({cells[n][1]})" if cells[n][1] != n else "") for n in NFES
            )
            out.append(f"| {name} | {text} |")
        out.append("| **best fewstep ODE solver / best diffusers** | " + " | ".join(
            f"{best_ours[n] / best_peer[n]:.2f}x" for n in NFES) + " |")
    return "\n".join(out)


def time_steps(scheduler, outputs: list[torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Seconds per step() call, model outputs precomputed (pure scheduler cost)."""
    best = float("inf")
    for _ in range(repeats):
        scheduler.set_timesteps(len(outputs))
        sample = x
        start = time.perf_counter()
        for output, t in zip(outputs, scheduler.timesteps):
            sample = scheduler.step(output, t, sample).prev_sample
        best = min(best, (time.perf_counter() - start) / len(outputs))
    return best


def step_cost(device: str) -> str:
    lines = ["| latents | solver | FewStepScheduler.step (ms) | DPMSolverMultistep.step (ms) | ratio |", "|---|---|---|---|---|"]
    for shape in [(1, 4, 64, 64), (8, 4, 64, 64), (16, 3, 32, 32)]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(device)
        outputs = [torch.randn(shape, generator=g).to(device) for _ in range(20)]
        for order, solver in [(2, "dpmpp_2m"), (3, "dpmpp_3m")]:
            ref = DPMSolverMultistepScheduler(solver_order=order)
            mine = FewStepScheduler.from_config(ref.config)
            assert mine.config.solver == solver
            t_ref = time_steps(ref, outputs, x, repeats=15)
            t_mine = time_steps(mine, outputs, x, repeats=15)
            lines.append(f"| {list(shape)} | {solver} | {t_mine * 1e3:.3f} | {t_ref * 1e3:.3f} | {t_mine / t_ref:.2f} |")
    return "\n".join(lines)


def unet_overhead(device: str) -> str:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).to(device).eval()
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    lines = ["| solver | steps | total (s) | in model (s) | outside the model |", "|---|---|---|---|---|"]
    for solver in ["dpmpp_2m", "dpmpp_3m", "sde_dpmpp_2m"]:
        scheduler = FewStepScheduler(solver=solver)
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        model_time = 0.0
        with torch.no_grad():
            scheduler.set_timesteps(10)
            start = time.perf_counter()
            for t in scheduler.timesteps:
                t0 = time.perf_counter()
                out = unet(x, t).sample
                if device == "cuda":
                    torch.cuda.synchronize()
                model_time += time.perf_counter() - t0
                x = scheduler.step(out, t, x).prev_sample
            if device == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - start
        lines.append(f"| {solver} | 10 | {total:.3f} | {model_time:.3f} | {100 * (total - model_time) / total:.2f}% |")
    return f"UNet2DModel {params:.2f}M parameters, batch 16 x 3 x 32 x 32, device {device}\n\n" + "\n".join(lines)


MNIST_NFES = [4, 6, 8]
MNIST_SAMPLERS = [  # (label, solver, schedule); "spec" = the shipped learned grid of that NFE
    ("Euler / DDIM, uniform", "ddim", "uniform"),
    ("DPM-Solver++(2M), uniform", "dpmpp_2m", "uniform"),
    ("DPM-Solver++(2M), logSNR", "dpmpp_2m", "logsnr"),
    ("DPM-Solver++(3M), uniform", "dpmpp_3m", "uniform"),
    ("UniPC bh2 (order 2), uniform", "unipc_bh2", "uniform"),
    ("UniPC bh2 (order 2), logSNR", "unipc_bh2", "logsnr"),
    ("DPM-Solver-fast, logSNR", "dpmpp_fast", "logsnr"),
    ("learned grid (assets/specs), 2M", None, "spec"),
]


def mnist_part(num_images: int, guidance_scale: float = 2.0, teachers: tuple[str, ...] = ("mnist_flow", "mnist_vp")) -> str:
    """FID / accuracy / RMS-to-reference of the main samplers on the shipped MNIST teachers."""
    from fewstep.io import assets_dir
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images, rms_pixel_error
    from fewstep.samplers import get_schedule, get_solver
    from fewstep.samplers.spec import SamplerSpec

    scorer, lines = MnistScorer(), []
    for name in teachers:
        teacher = load_teacher(assets_dir() / "teachers" / name)
        run = lambda **sampler: generate_images(teacher, num_images=num_images, seed=1,  # noqa: E731
                                                guidance_scale=guidance_scale, **sampler)
        reference, labels, _ = run(ts=get_schedule("logsnr" if teacher.path.kind == "vp" else "uniform", teacher.path, 32),
                                   solver="dpmpp_3m")
        ref = scorer.score(reference, labels)
        lines += [f"\n#### {name} (guidance {guidance_scale}): FID_{num_images} / accuracy / RMS pixel error to the "
                  f"32-step DPM-Solver++(3M) run from the same noise (reference: FID {ref.fid:.2f}, "
                  f"{100 * ref.accuracy:.1f}%)\n",
                  "| sampler | " + " | ".join(f"NFE {n}" for n in MNIST_NFES) + " |", "|---|" + "---|" * len(MNIST_NFES)]
        for label, solver, schedule in MNIST_SAMPLERS:
            cells = []
            for nfe in MNIST_NFES:
                if schedule == "spec":
                    sampler = SamplerSpec.load(assets_dir() / "specs" / f"{name}_nfe{nfe}.safetensors").sample_args()
                elif solver == "dpmpp_fast":  # splits the NFE budget into 3S/2S/1 steps on a grid of its own size
                    fast = get_solver(solver, nfe=nfe)
                    forced = 1 + int(teacher.path.kind == "flow")  # first order to t = 0, and from alpha = 0 on a flow
                    sampler = {"ts": get_schedule(schedule, teacher.path, fast.num_steps_for(nfe, forced)), "solver": fast}
                else:
                    sampler = {"ts": get_schedule(schedule, teacher.path, nfe), "solver": solver}
                images, _, used = run(**sampler)
                scores = scorer.score(images, labels)
                cells.append(f"{scores.fid:.2f} / {100 * scores.accuracy:.0f}% / {rms_pixel_error(images, reference):.3f}"
                             + (f" ({used})" if used != nfe else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["errors", "step", "unet", "mnist", "all"], default="all")
    parser.add_argument("--images", type=int, default=300, help="images per MNIST run (--part mnist)")
    parser.add_argument("--teachers", nargs="+", default=["mnist_flow", "mnist_vp"], help="--part mnist: which teachers")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"Machine: {describe_machine()}\n")
    torch.set_grad_enabled(False)
    if args.part in ("errors", "all"):
        print(error_tables(args.samples))
    if args.part in ("step", "all"):
        print(f"\n#### Scheduler step cost ({args.device}, 20 steps, best of 15)\n")
        print(step_cost(args.device))
    if args.part in ("unet", "all"):
        print("\n#### Time outside the model\n")
        print(unet_overhead(args.device))
    if args.part in ("mnist", "all"):
        print(mnist_part(args.images, teachers=tuple(args.teachers)))


if __name__ == "__main__":
    main()
