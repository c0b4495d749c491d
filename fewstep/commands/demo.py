"""`fewstep demo`: the shipped MNIST teachers sampled with several solvers and grids, scored and plotted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (label, solver, schedule) per teacher path, and the reference sampler (many steps).
CONFIGS = {
    "flow": [("Euler, uniform", "ddim", "uniform"), ("DPM-Solver++(2M), uniform", "dpmpp_2m", "uniform")],
    "vp": [("DDIM, uniform", "ddim", "uniform"), ("DPM-Solver++(2M), logSNR", "dpmpp_2m", "logsnr")],
}
REFERENCE = {"flow": ("dpmpp_3m", "uniform"), "vp": ("dpmpp_3m", "logsnr")}


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="sample the shipped MNIST teachers at NFE 4/8/16 (and their shipped learned grids), score FID and accuracy, plot",
        description="Load the shipped class-conditional MNIST teachers (flow and VP), sample the same noise "
        "with several solvers and grids at a few NFEs plus a many-step reference (--reference-steps), score FID on the `mnist` "
        "classifier features against the embedded MNIST set and the share of samples classified as their "
        "label, print the table and write image grids, an FID-vs-NFE plot and results.json.",
    )
    parser.add_argument("--teachers", nargs="+", default=["mnist_flow", "mnist_vp"],
                        help="teacher folders under assets/teachers (or paths); default: mnist_flow mnist_vp")
    parser.add_argument("--nfe", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--n", type=int, default=100, help="images per configuration (default 100: 10 per class)")
    parser.add_argument("--reference-steps", type=int, default=32,
                        help="steps of the DPM-Solver++(3M) reference run (default 32; converged on these teachers)")
    parser.add_argument("--guidance-scale", type=float, default=2.0,
                        help="classifier-free guidance (default 2.0, the teachers' setting; 1.0 disables it)")
    parser.add_argument("--audio", choices=("on", "off", "only"), default="on",
                        help="the audio part: the shipped music generator (assets/music/generator) with Euler at 60 "
                        "and 8 steps, DPM-Solver++(2M) and a learned spec at 8, scored and written as WAVs "
                        "(default on; 'only' skips the MNIST part)")
    parser.add_argument("--audio-n", type=int, default=64, help="held-out captions per audio run (default 64)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _teacher_dir(name: str) -> Path:
    from fewstep.io import assets_dir

    candidate = Path(name)
    return candidate if candidate.exists() else assets_dir() / "teachers" / name


def _runs(teacher_name: str, kind: str, nfes: list[int], reference_steps: int) -> list[tuple[str, int, dict]]:
    """(label, steps, how to sample) per run: the reference first (its samples are the target of the paired
    error), then every config x NFE, then the shipped learned spec of this teacher at each NFE it exists for."""
    solver, schedule = REFERENCE[kind]
    runs = [(f"DPM-Solver++(3M), {reference_steps} steps", reference_steps, {"solver": solver, "schedule": schedule})]
    runs += [(label, nfe, {"solver": solver, "schedule": schedule}) for label, solver, schedule in CONFIGS[kind] for nfe in nfes]
    for nfe in nfes:
        spec = shipped_spec(teacher_name, nfe)
        if spec is not None:
            runs.append((LEARNED_LABEL, nfe, {"spec": spec}))
    for label, student in shipped_students(teacher_name):
        runs.append((label, 1, {"student": student}))
    return runs


#: the demo row of the learned grids shipped in assets/specs (fewstep fit-sampler, guidance 2).
LEARNED_LABEL = "learned grid (assets/specs)"


#: the demo rows of the one-step students shipped in assets/students as <teacher><suffix> (guidance 2 built in).
STUDENT_LABELS = {
    "_msd": "MSD students, 1 step (assets/students)",
    "_slimflow": "SlimFlow 1/2-size student, 1 step",
}


def shipped_students(teacher_name: str) -> list[tuple[str, Path]]:
    """(demo label, folder) of each one-step student of the teacher shipped in assets/students (MSD, SlimFlow)."""
    from fewstep.io import assets_dir

    found = []
    for suffix, label in STUDENT_LABELS.items():
        path = assets_dir() / "students" / f"{Path(teacher_name).name}{suffix}"
        if (path / "model_index.json").is_file():
            found.append((label, path))
    return found


def shipped_spec(teacher_name: str, nfe: int) -> Path | None:
    """assets/specs/<teacher>_nfe<N>.safetensors if it is shipped."""
    from fewstep.io import assets_dir

    path = assets_dir() / "specs" / f"{Path(teacher_name).name}_nfe{nfe}.safetensors"
    return path if path.is_file() else None


def _sampler_args(how: dict, teacher, steps: int) -> dict:
    """`generate_images` keywords for a (solver, schedule) run or a spec run."""
    from fewstep.samplers import get_schedule
    from fewstep.samplers.spec import SamplerSpec

    if "student" in how:  # one step from pure noise: any solver returns the students' x0 (Euler for a flow student)
        return {"ts": get_schedule("uniform", teacher.path, steps), "solver": "ddim"}
    if "spec" in how:
        spec = SamplerSpec.load(how["spec"])
        spec.check_compatible(teacher.path, steps)
        return spec.sample_args()
    return {"ts": get_schedule(how["schedule"], teacher.path, steps), "solver": how["solver"]}


def run(args) -> int:
    if args.n < 10 or min(args.nfe) < 1:
        raise ValueError("--n must be >= 10 (one image per class) and --nfe values >= 1")
    if args.audio != "off" and args.audio_n < 2:
        raise ValueError("--audio-n must be >= 2 (a Fréchet distance needs two clips)")
    if args.audio != "only":
        run_images(args)
    if args.audio != "off":
        from .demo_audio import format_audio_results, run_audio_demo

        results = run_audio_demo(args.out, args.audio_n, args.seed, args.device)
        print(format_audio_results(results, args.audio_n))
        print(f"wrote {args.out}/results_audio.json, WAVs and spectrograms in {args.out}/audio")
    return 0


def run_images(args) -> None:
    """The MNIST part: every teacher x sampler x NFE, scored, tabulated, plotted."""
    import torch
    from tqdm.auto import tqdm

    from fewstep.io import write_atomic
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images, rms_pixel_error

    torch.manual_seed(args.seed)
    scorer = MnistScorer(args.device)
    teachers = {name: load_teacher(_teacher_dir(name), args.device) for name in args.teachers}
    plan = [(name, *run) for name, t in teachers.items() for run in _runs(name, t.path.kind, args.nfe, args.reference_steps)]
    results, grids, reference = [], {}, {}
    for name, label, steps, how in tqdm(plan, desc="demo", unit="run"):
        teacher = teachers[name]
        model, guidance = (load_teacher(how["student"], args.device), 1.0) if "student" in how else (teacher, args.guidance_scale)
        images, labels, nfe = generate_images(model, num_images=args.n, seed=args.seed, guidance_scale=guidance,
                                              device=args.device, **_sampler_args(how, model, steps))
        scores = scorer.score(images, labels)
        reference.setdefault(name, images)  # same noise and labels for every run of this teacher
        error = rms_pixel_error(images, reference[name])
        results.append({"teacher": name, "sampler": label, "steps": steps, "nfe": nfe,
                        "fid": scores.fid, "accuracy": scores.accuracy, "rms_to_reference": error})
        grids[(name, label, steps)] = images[: 10 * max(1, min(4, args.n // 10))]
    args.out.mkdir(parents=True, exist_ok=True)
    print(format_results(results, args.n))
    write_atomic(args.out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    for name in teachers:
        write_grid({k[1:]: v for k, v in grids.items() if k[0] == name}, args.out / f"{name}_samples.png")
    plot_fid(results, args.out / "fid_vs_nfe.png", args.n)
    print(f"wrote {args.out}/results.json, {args.out}/fid_vs_nfe.png and one sample grid per teacher")


def format_results(results: list[dict], n: int) -> str:
    """One block per teacher: rows = samplers, columns = NFE; cells 'FID (accuracy) error-to-reference'."""
    lines = []
    for teacher in dict.fromkeys(r["teacher"] for r in results):
        rows = [r for r in results if r["teacher"] == teacher]
        nfes = sorted({r["nfe"] for r in rows if not r["sampler"].endswith("steps")})
        lines.append(f"\n{teacher}: FID_{n} on mnist features vs embedded MNIST (classifier accuracy) "
                     "| RMS pixel error vs the reference run from the same noise")
        width = max(32, *(len(r["sampler"]) + 2 for r in rows))
        lines.append("sampler".ljust(width) + "".join(f"NFE {v}".rjust(26) for v in nfes))
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            cells = {r["nfe"]: r for r in rows if r["sampler"] == sampler}
            text = "".join((_cell(cells[v]) if v in cells else "").rjust(26) for v in nfes)
            if sampler.endswith("steps"):
                only = next(iter(cells.values()))
                text = f"{_cell(only)} at NFE {only['nfe']}".rjust(26)
            lines.append(sampler.ljust(width) + text)
    return "\n".join(lines)


def _cell(row: dict) -> str:
    return f"{row['fid']:6.2f} ({100 * row['accuracy']:5.1f}%) | {row['rms_to_reference']:.3f}"


def write_grid(images: dict, out: Path) -> None:
    """Rows: one per (sampler, steps); each row shows the first images (digits 0-9 repeated)."""
    import torch
    from PIL import Image, ImageDraw

    rows = list(images.items())
    height, width = rows[0][1].shape[-2:]
    label_width = 230
    count = max(v.shape[0] for _, v in rows)
    canvas = Image.new("L", (label_width + count * (width + 1), len(rows) * (height + 2)), color=255)
    draw = ImageDraw.Draw(canvas)
    for r, ((label, steps), batch) in enumerate(rows):
        top = r * (height + 2)
        draw.text((4, top + height // 3), f"{label} [{steps}]", fill=0)
        for c, image in enumerate(batch):
            tile = torch.as_tensor(image).float().mean(0).round().to(torch.uint8).numpy()
            canvas.paste(Image.fromarray(tile), (label_width + c * (width + 1), top))
    from fewstep.io import write_atomic

    write_atomic(out, lambda tmp: canvas.save(tmp, format="PNG"))


def plot_fid(results: list[dict], out: Path, n: int) -> None:
    """FID vs NFE, one panel per teacher; the reference run as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fewstep.io import write_atomic

    teachers = list(dict.fromkeys(r["teacher"] for r in results))
    fig, axes = plt.subplots(1, len(teachers), figsize=(5.5 * len(teachers), 4), squeeze=False)
    for ax, teacher in zip(axes[0], teachers):
        rows = [r for r in results if r["teacher"] == teacher]
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            series = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
            if sampler.endswith("steps"):
                ax.axhline(series[0]["fid"], linestyle="--", color="gray", label=sampler)
            else:
                ax.plot([r["nfe"] for r in series], [r["fid"] for r in series], marker="o", label=sampler)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(f"FID_{n} (mnist features)")
        ax.set_title(teacher)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
