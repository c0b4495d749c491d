"""The audio part of `fewstep demo`: the shipped ACE-Step-style generator sampled with a few schedulers, scored, written as WAVs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

#: (label, model under assets/music, FewStepScheduler solver or None for the pipeline's own Euler, steps,
#:  spec file name under assets/music/specs). "turbo" is the distilled student (its own grids, shift 3, no guidance).
AUDIO_RUNS: list[tuple[str, str, str | None, int, str | None]] = [
    ("Euler, 60 steps (ACE-Step's default)", "generator", None, 60, None),
    ("Euler, 8 steps", "generator", None, 8, None),
    ("DPM-Solver++(2M), 8 steps", "generator", "dpmpp_2m", 8, None),
    ("learned spec, 8 steps", "generator", None, 8, "dpmpp_2m_nfe8.safetensors"),
    ("turbo student, 8 steps", "turbo", None, 8, None),
    ("turbo student, 1 step", "turbo", None, 1, None),
]


def generator_dir(model: str = "generator") -> Path:
    """A shipped music model folder: the generator (an AceStepPipeline) or its turbo student."""
    from fewstep.io import assets_dir

    return assets_dir() / "music" / model


def run_audio_demo(out: Path, n: int = 64, seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """Sample `n` held-out captions per run, score FD / conditioning accuracy / RTF, write WAVs + spectrograms."""
    from fewstep.audio import save_spectrogram_grid, write_audio
    from fewstep.io import assets_dir, write_atomic
    from fewstep.metrics.music import build_music_feature_extractor
    from fewstep.pipelines.music import generate_music, held_out_music, load_music_pipeline, music_info, score_music

    folder = generator_dir()
    seconds = music_info(folder).get("clip_seconds", 2.048)
    audio, prompts, lyrics, labels = held_out_music(n, seconds)
    reference = build_music_feature_extractor()(audio).double()
    results = []
    for label, model, solver, steps, spec_name in AUDIO_RUNS:
        spec = assets_dir() / "music" / "specs" / spec_name if spec_name else None
        if (spec is not None and not spec.is_file()) or not (generator_dir(model) / "model_index.json").is_file():
            continue
        pipe = load_music_pipeline(generator_dir(model), solver=solver, spec=spec, device=device)
        start = time.perf_counter()
        samples = generate_music(pipe, prompts, lyrics, num_clips=1, num_steps=steps, duration=seconds, seed=seed,
                                 batch_size=64)
        scores = score_music(samples, labels, reference, time.perf_counter() - start)
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        for k in range(4):
            write_audio(out / "audio" / slug / f"{k:02d}.wav", samples.audio[k], samples.sample_rate)
        save_spectrogram_grid(samples.audio[:4, 0], samples.sample_rate, out / "audio" / f"{slug}.png",
                              titles=prompts[:4])
        results.append({"sampler": label, "nfe": scores.nfe, "fd": scores.fd, "fd_ci": [scores.fd_low, scores.fd_high],
                        "accuracy": scores.accuracy, "real_time_factor": scores.real_time_factor, "row": scores.row()})
    write_atomic(out / "results_audio.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    return results


def format_audio_results(results: list[dict[str, Any]], n: int) -> str:
    """Markdown table of the audio runs."""
    lines = [f"Music generator (assets/music/generator) and its turbo student (assets/music/turbo), {n} held-out captions "
             "per row, FD on `music` features:",
             "| sampler | NFE | FD [95% CI] | instrument | key | tempo | RTF |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['row']} |" for r in results]
    return "\n".join(lines)
