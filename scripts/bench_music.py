"""Benchmarks of the ACE-Step-style music chain (docs/BENCHMARKS.md, "Music generator").

    python scripts/bench_music.py autoencoder assets/music/autoencoder          # held-out SNR / LSD
    python scripts/bench_music.py curve runs/music                               # training curve (tensorboard logs)
    python scripts/bench_music.py fit-spec assets/music/generator --nfe 8 --out assets/music/specs/dpmpp_2m_nfe8.safetensors
    python scripts/bench_music.py samplers assets/music/generator --n 256 --nfe 4 8 16 32 60 --spec SPEC
    python scripts/bench_music.py compare runs/music_repa_off/pipeline runs/music_repa_on/pipeline --nfe 16 60
    python scripts/bench_music.py guidance assets/music/generator --nfe 60 --scales 2 4
    python scripts/bench_music.py turbo assets/music/turbo runs/turbo_single/pipeline runs/turbo_regression/pipeline \
        --teacher assets/music/generator --spec assets/music/specs/dpmpp_2m_nfe8.safetensors

Every cell: `--n` clips, one per held-out caption + lyrics (the first n of the synthetic test split),
seed 0; FD on the `music` features against those n real held-out clips, 95 % bootstrap interval;
conditioning accuracy = share of clips the shipped feature net classifies as the requested
instrument / key / tempo; RTF = seconds of audio per second of wall-clock (this CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fewstep.pipelines.music import (
    generate_music,
    held_out_music,
    load_music_pipeline,
    music_denoiser,
    music_info,
    score_music,
)


def reference(n: int, seconds: float) -> tuple[torch.Tensor, list[str], list[str], dict[str, torch.Tensor]]:
    """Held-out clips' features [n, D], captions, lyrics and labels."""
    from fewstep.metrics.music import build_music_feature_extractor

    audio, prompts, lyrics, labels = held_out_music(n, seconds)
    return build_music_feature_extractor()(audio).double(), prompts, lyrics, labels


def decoded_reference(folder: Path, n: int, seconds: float) -> torch.Tensor:
    """Features [n, D] of the held-out clips passed through the generator's own VAE (encode, decode, peak -1 dBFS):
    the reference that leaves out the autoencoder's error, so FD measures the generator and sampler."""
    from fewstep.metrics.music import build_music_feature_extractor

    pipe = load_music_pipeline(folder)
    audio, *_ = held_out_music(n, seconds)
    with torch.no_grad():
        decoded = torch.cat([pipe.vae.decode(pipe.vae.encode(a).latent_dist.mean).sample for a in audio.split(32)])
    decoded = decoded * (10 ** (-1 / 20) / decoded.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6))
    return build_music_feature_extractor()(decoded).double()


class TransformerClock:
    """Wall-clock seconds spent inside `pipe.transformer` (forward hooks): the denoising cost without encoders and VAE."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.seconds, self._start = 0.0, 0.0
        self.handles = [transformer.register_forward_pre_hook(self._begin), transformer.register_forward_hook(self._end)]

    def _begin(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _end(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._start

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def cell(folder: Path, nfe: int, n: int, ref: tuple, solver: str | None = None, spec: str | None = None,
         guidance_scale: float = 1.0, decoded: torch.Tensor | None = None, target: torch.Tensor | None = None,
         guidance: str = "apg", shift: float = 3.0, clock: list[float] | None = None, plain: bool = False) -> str:
    """Generate one clip per held-out caption with one sampler; its table cells (see HEADER).

    `clock`, if given, receives the seconds spent in the transformer (the denoising loop's own cost).
    `plain` loads a turbo student as a plain `AceStepPipeline`, which runs any grid (also untrained ones).
    """
    features, prompts, lyrics, labels = ref
    if plain:
        from diffusers import AceStepPipeline

        pipe = AceStepPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = load_music_pipeline(folder, solver=solver, spec=spec)
    seconds = music_info(folder).get("clip_seconds", 2.048)
    steps = nfe // 2 if guidance_scale > 1 else nfe
    if spec is not None:
        from fewstep.samplers.spec import SamplerSpec

        steps = SamplerSpec.load(spec).num_steps
    timer = TransformerClock(pipe.transformer)
    start = time.perf_counter()
    samples = generate_music(pipe, prompts[:n], lyrics[:n], num_clips=1, num_steps=steps, guidance_scale=guidance_scale,
                             duration=seconds, batch_size=64, guidance=guidance, shift=shift)
    elapsed = time.perf_counter() - start
    timer.remove()
    if clock is not None:
        clock.append(timer.seconds)
    scores = score_music(samples, {k: v[:n] for k, v in labels.items()}, features, elapsed)
    cells = [str(scores.nfe), scores.row()]
    if decoded is not None:
        from fewstep.metrics.frechet import frechet_distance_from_features
        from fewstep.metrics.music import build_music_feature_extractor

        cells.append(f"{frechet_distance_from_features(build_music_feature_extractor()(samples.audio).double(), decoded):.2f}")
    if target is not None:
        cells.append(f"{float((samples.latents - target).pow(2).mean().sqrt()):.4f}")
    return " | ".join(cells)


def latent_target(folder: Path, n: int, ref: tuple, steps: int, guidance_scale: float = 1.0) -> torch.Tensor:
    """Final latents [n, T, C] of the pipeline's own Euler at `steps` steps (CFG if scale > 1) from the benchmark's noise and captions."""
    _, prompts, lyrics, _ = ref
    pipe = load_music_pipeline(folder)
    seconds = music_info(folder).get("clip_seconds", 2.048)
    return generate_music(pipe, prompts[:n], lyrics[:n], num_steps=steps, duration=seconds, batch_size=64,
                          guidance_scale=guidance_scale, guidance="cfg").latents


def real_floor(n: int, seconds: float, ref: tuple) -> str:
    """FD of n real *training* clips against the held-out reference: the best a generator can score at this n."""
    from fewstep.data.music import MusicDataset
    from fewstep.metrics.frechet import frechet_distance_from_features
    from fewstep.metrics.music import build_music_feature_extractor

    data = MusicDataset("train", n_train=n, seconds=seconds)
    audio = torch.stack([data[i]["audio"] for i in range(n)])
    return f"{frechet_distance_from_features(build_music_feature_extractor()(audio).double(), ref[0]):.2f}"


HEADER = ("| sampler | NFE | FD vs real [95% CI] | instrument | key | tempo | RTF | FD vs decoded real | "
          "latent RMS to Euler-{ref} |\n|---|---|---|---|---|---|---|---|---|")


def run_samplers(args) -> None:
    seconds = music_info(args.pipeline).get("clip_seconds", 2.048)
    ref = reference(args.n, seconds)
    decoded = decoded_reference(args.pipeline, args.n, seconds)
    from fewstep.metrics.frechet import frechet_distance_from_features

    print(f"floors at n={args.n}: real training clips vs held-out FD {real_floor(args.n, seconds, ref)}; "
          f"decoded held-out vs held-out FD {frechet_distance_from_features(decoded, ref[0]):.2f}")
    target = latent_target(args.pipeline, args.n, ref, args.reference_steps)
    print(HEADER.format(ref=args.reference_steps))
    samplers = [("Euler (pipeline's FlowMatchEuler)", None), *[(s, s) for s in args.solvers]]
    for nfe in args.nfe:
        for label, solver in samplers:
            row = cell(args.pipeline, nfe, args.n, ref, solver, None, args.guidance_scale, decoded, target)
            print(f"| {label} | {row} |", flush=True)
    for spec in args.spec or []:
        print(f"| learned spec {Path(spec).name} | {cell(args.pipeline, 0, args.n, ref, spec=spec, decoded=decoded, target=target)} |",
              flush=True)


def run_compare(args) -> None:
    seconds = music_info(args.pipelines[0]).get("clip_seconds", 2.048)
    ref = reference(args.n, seconds)
    print("| generator | NFE | FD vs real [95% CI] | instrument | key | tempo | RTF | FD vs decoded real |\n"
          "|---|---|---|---|---|---|---|---|")
    for folder in args.pipelines:
        decoded = decoded_reference(folder, args.n, seconds)
        for nfe in args.nfe:
            print(f"| {folder} | {cell(folder, nfe, args.n, ref, args.solver, decoded=decoded)} |", flush=True)


def run_guidance(args) -> None:
    """Euler at `--nfe` evaluations with no guidance, APG and CFG at each scale (guided runs take half the steps)."""
    seconds = music_info(args.pipeline).get("clip_seconds", 2.048)
    ref = reference(args.n, seconds)
    decoded = decoded_reference(args.pipeline, args.n, seconds)
    print("| guidance | scale | NFE | FD vs real [95% CI] | instrument | key | tempo | RTF | FD vs decoded real |\n"
          "|---|---|---|---|---|---|---|---|---|")
    print(f"| none | 1 | {cell(args.pipeline, args.nfe, args.n, ref, decoded=decoded)} |", flush=True)
    for scale in args.scales:
        for kind in ("apg", "cfg"):
            row = cell(args.pipeline, args.nfe, args.n, ref, guidance_scale=scale, decoded=decoded, guidance=kind)
            print(f"| {kind.upper()} | {scale:g} | {row} |", flush=True)


def run_fit_spec(args) -> None:
    """Fit a learned DPM-Solver++(2M) spec (grid + weights) to 60-step Euler solutions from training captions."""
    from fewstep.data.music import MusicDataset
    from fewstep.samplers import sample
    from fewstep.samplers.learned import fit_sampler

    pipe = load_music_pipeline(args.pipeline)
    seconds = music_info(args.pipeline).get("clip_seconds", 2.048)
    data = MusicDataset("train", n_train=args.n, seconds=seconds)
    labels = data.labels
    denoiser, cond, shape = music_denoiser(pipe, [l.prompt for l in labels], [l.lyrics for l in labels], seconds)
    noise = torch.randn((args.n, *shape), generator=torch.Generator().manual_seed(1))
    t = torch.linspace(1.0, 0.0, args.teacher_steps + 1, dtype=torch.float64)
    teacher_ts = 3 * t / (1 + 2 * t)
    start = time.perf_counter()
    with torch.no_grad():
        targets = torch.cat([sample(denoiser, noise[i:i + 64], teacher_ts, "ddim",
                                    **{k: v[i:i + 64] for k, v in cond.items()}).x for i in range(0, args.n, 64)])
    print(f"teacher: {args.teacher_steps} Euler steps on the shift-3 grid, {args.n} pairs in {time.perf_counter() - start:.0f} s")
    spec, history = fit_sampler(denoiser, args.nfe, noise, targets, solver="dpmpp_2m", learn="both",
                                init_schedule="logsnr", iterations=args.iterations, batch_size=32, cond=cond,
                                progress=True)
    spec.provenance.update({"pipeline": str(args.pipeline), "teacher": f"euler {args.teacher_steps} steps, shift 3"})
    spec.save(args.out)
    print(f"wrote {args.out}: grid {[round(float(x), 4) for x in spec.ts]}; validation MSE to the teacher "
          f"{history.validation_before:.4g} (analytic 2M on the logSNR grid) -> {history.validation_error:.4g}")


def run_autoencoder(args) -> None:
    from diffusers import AutoencoderOobleck

    from fewstep.metrics.reconstruction import log_spectral_distance, snr_db

    from fewstep.metrics.frechet import frechet_distance_from_features
    from fewstep.metrics.music import build_music_feature_extractor, conditioning_accuracy

    vae = AutoencoderOobleck.from_pretrained(args.pipeline).eval()
    audio, _, _, labels = held_out_music(args.n)
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(a).latent_dist.mean).sample for a in audio.split(32)])
    snr, lsd = snr_db(audio, recon), log_spectral_distance(audio, recon)
    half = lambda x: 1.96 * float(x.std()) / len(x) ** 0.5  # noqa: E731
    print(f"held-out clips: {args.n}; SNR {float(snr.mean()):.2f} ± {half(snr):.2f} dB; "
          f"LSD {float(lsd.mean()):.2f} ± {half(lsd):.2f} dB; latent {vae.config.decoder_input_channels} x "
          f"{vae.config.sampling_rate / torch.tensor(vae.config.downsampling_ratios).prod().item():.2f} frames/s")
    extractor = build_music_feature_extractor()
    fd = frechet_distance_from_features(extractor(recon).double(), extractor(audio).double())
    accuracy = conditioning_accuracy(recon, labels["instrument"], labels["key"], labels["tempo"])
    print(f"reconstructions vs the same real clips: FD {fd:.2f} (music features); the feature net labels them "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in accuracy.items()) + " correctly (the generator's ceiling)")


def run_curve(args) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(args.run_dir) / "logs" / "train"))
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t in ("loss", "flow", "repa", "l1", "mrstft")]
    series = {t: {e.step: e.value for e in events.Scalars(t)} for t in tags}
    steps = sorted(series[tags[0]])
    pick = steps[:: max(1, len(steps) // args.points)] + ([steps[-1]] if steps[-1] not in steps[:: max(1, len(steps) // args.points)] else [])
    print("| step | " + " | ".join(tags) + " |\n|---|" + "---|" * len(tags))
    for step in pick:
        print(f"| {step} | " + " | ".join(f"{series[t].get(step, float('nan')):.4f}" for t in tags) + " |")


def run_turbo(args) -> None:
    """Turbo students vs the teacher (60 guided Euler steps, 60 unguided, 8-NFE samplers): the first student at each of
    its grids, the others at MAIN_GRIDS (a grid a student was not trained on runs through a plain AceStepPipeline)."""
    from fewstep.pipelines.music import load_music_pipeline as load

    seconds = music_info(args.teacher).get("clip_seconds", 2.048)
    ref = reference(args.n, seconds)
    decoded = decoded_reference(args.teacher, args.n, seconds)
    target = latent_target(args.teacher, args.n, ref, args.reference_steps, args.guidance_scale)
    print(f"| model | sampler | NFE | FD vs real [95% CI] | instrument | key | tempo | RTF | FD vs decoded real | "
          f"latent RMS to Euler-{args.reference_steps} CFG w={args.guidance_scale:g} | transformer s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|", flush=True)

    def row(model: str, sampler: str, folder: Path, nfe: int, **kwargs: object) -> None:
        clock: list[float] = []
        cells = cell(folder, nfe, args.n, ref, decoded=decoded, target=target, clock=clock, **kwargs)
        print(f"| {model} | {sampler} | {cells} | {clock[0]:.2f} |", flush=True)

    teacher = str(args.teacher)
    row(teacher, f"Euler 60, CFG w={args.guidance_scale:g}", args.teacher, 120, guidance_scale=args.guidance_scale, guidance="cfg")
    row(teacher, f"Euler 60, APG w={args.guidance_scale:g}", args.teacher, 120, guidance_scale=args.guidance_scale)
    row(teacher, "Euler 60, unguided", args.teacher, 60)
    row(teacher, "DPM-Solver++(2M) 8", args.teacher, 8, solver="dpmpp_2m")
    row(teacher, "UniPC 4", args.teacher, 4, solver="unipc_bh2")
    row(teacher, "Euler 1", args.teacher, 1)
    if args.spec:
        row(teacher, f"learned spec {Path(args.spec).name}", args.teacher, 0, spec=args.spec)
    for index, folder in enumerate(args.students):
        trained = {(int(g["steps"]), g["shift"]) for g in load(folder).student_grids}
        wanted = sorted(trained, key=lambda g: (-g[0], -(g[1] or 0))) if index == 0 else MAIN_GRIDS
        for steps, shift in wanted:
            untrained = (steps, shift) not in trained and not (steps == 1 and (1, 3.0) in trained)
            label = f"{steps} steps, shift {shift:g}" + (" (untrained grid)" if untrained else "")
            row(str(folder), label, folder, steps, shift=shift, plain=untrained)


#: grids benchmarked for every student after the first: its steps at shift 3, and 8 steps at shifts 1 and 2.
MAIN_GRIDS = [(8, 3.0), (4, 3.0), (1, 3.0), (8, 2.0), (8, 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("samplers")
    p.add_argument("pipeline", type=Path)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 32, 60])
    p.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc_bh2"])
    p.add_argument("--spec", nargs="*", default=None)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--reference-steps", type=int, default=200, help="Euler steps of the latent reference solution")
    p = sub.add_parser("compare")
    p.add_argument("pipelines", type=Path, nargs="+")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--nfe", type=int, nargs="+", default=[16, 60])
    p.add_argument("--solver", default=None)
    p = sub.add_parser("guidance")
    p.add_argument("pipeline", type=Path)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--nfe", type=int, default=60)
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    p = sub.add_parser("fit-spec")
    p.add_argument("pipeline", type=Path)
    p.add_argument("--nfe", type=int, default=8)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--teacher-steps", type=int, default=60)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("turbo")
    p.add_argument("students", type=Path, nargs="+", help="AceStepTurboPipeline folders")
    p.add_argument("--teacher", type=Path, default=Path("assets/music/generator"))
    p.add_argument("--spec", default=None, help="a learned 8-NFE spec of the teacher (its best 8-step sampler)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--reference-steps", type=int, default=200, help="Euler steps of the latent reference solution")
    p = sub.add_parser("autoencoder")
    p.add_argument("pipeline", type=Path)
    p.add_argument("--n", type=int, default=256)
    p = sub.add_parser("curve")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--points", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads if hasattr(args, "threads") else 1)
    {"samplers": run_samplers, "compare": run_compare, "guidance": run_guidance, "fit-spec": run_fit_spec, "autoencoder": run_autoencoder,
     "curve": run_curve, "turbo": run_turbo}[args.what](args)


if __name__ == "__main__":
    main()
