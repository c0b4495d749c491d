"""Sampling fewstep's ACE-Step-style music generators (diffusers' `AceStepPipeline`) with any fewstep scheduler.

    pipe = load_music_pipeline("assets/music/generator", solver="dpmpp_2m")   # or spec="...safetensors"
    audio = generate_music(pipe, ["piano, 120 bpm, C major"], ["la la lo"], num_clips=4, num_steps=8).audio

`AceStepPipeline` computes its own time grid (N + 1 points of t, shifted by `shift`, ACE-Step's
default 3) and hands it to the scheduler as `sigmas`; `FewStepScheduler` then runs its solver on
that grid, or on a sampler spec's own grid (a BOSS or learned spec fixes the step count).
Guidance: the pipeline's APG (adaptive projected guidance, Sadat et al. 2024) when
`guidance_scale > 1`; `guidance="cfg"` swaps in plain classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: the training-data record an exported generator carries (written by the `acestep` objective).
MUSIC_INFO = "music.json"
GUIDANCES = ("apg", "cfg")


@dataclass
class MusicSamples:
    """Generated clips and how they were made."""

    audio: Tensor  # [N, C, T] float32, peak-normalised to -1 dBFS by the pipeline
    prompts: list[str]
    lyrics: list[str]
    sample_rate: int
    nfe: int  # transformer evaluations per clip
    latents: Tensor | None = None  # [N, T, C] the final latents (before the VAE decoder)


#: saved pipeline classes that are ACE-Step-style music generators (the teacher and its turbo student).
MUSIC_PIPELINES = ("AceStepPipeline", "AceStepTurboPipeline")


def pipeline_class_name(folder: str | Path) -> str | None:
    """The `_class_name` of the pipeline saved in `folder`, or None without a model_index.json."""
    index = Path(folder) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def is_music_pipeline(folder: str | Path) -> bool:
    """True if `folder` holds a saved `AceStepPipeline` (or fewstep's turbo student of one)."""
    return pipeline_class_name(folder) in MUSIC_PIPELINES


def is_turbo_pipeline(folder: str | Path) -> bool:
    """True if `folder` holds a distilled `AceStepTurboPipeline` (fixed grids, no guidance)."""
    return pipeline_class_name(folder) == "AceStepTurboPipeline"


def music_info(folder: str | Path) -> dict[str, Any]:
    """The generator's music.json (tags, clip length, sample rate), or {} for an AceStepPipeline made elsewhere."""
    path = Path(folder) / MUSIC_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def load_music_pipeline(folder: str | Path, solver: str | None = None, spec: str | Path | None = None,
                        device: str | torch.device = "cpu") -> Any:
    """`AceStepPipeline.from_pretrained(folder)` with a `FewStepScheduler` (solver or spec) when one is asked for."""
    from diffusers import AceStepPipeline

    from .scheduler import FewStepScheduler
    from .turbo import AceStepTurboPipeline

    if not is_music_pipeline(folder):
        raise ValueError(f"{folder} is not a saved AceStepPipeline (model_index.json names another class or is missing)")
    turbo = is_turbo_pipeline(folder)
    if turbo and (solver is not None or spec is not None):
        raise ValueError(f"{folder} is a turbo student: it runs its own trained time grids with Euler steps; a solver or "
                         "sampler spec does not apply (sample its teacher with those instead)")
    pipe = _quiet_load(AceStepTurboPipeline if turbo else AceStepPipeline, folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    if spec is not None:
        pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, spec=str(spec))
    elif solver is not None:
        pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver=solver)
    return pipe


def _quiet_load(cls: Any, folder: str | Path) -> Any:
    """`cls.from_pretrained(folder)` without diffusers' per-component progress bars and torch's weight_norm notice."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from transformers.utils import logging as transformers_logging

    loggers = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in loggers:
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            return cls.from_pretrained(str(folder))
    finally:
        for module in loggers:
            module.enable_progress_bar()


def check_prompts(pipe: Any, prompts: list[str], info: dict[str, Any]) -> None:
    """Refuse captions with words the generator never saw in training, listing the tags it knows."""
    from fewstep.models.acestep import unknown_words

    for prompt in prompts:
        unknown = unknown_words(pipe.tokenizer, prompt)
        if unknown:
            tags = info.get("tags", {})
            known = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in tags.items()) or "see the training captions"
            raise ValueError(f"prompt {prompt!r} has words this generator never saw in training: {', '.join(unknown)}. "
                             f"Write captions like 'piano, 120 bpm, C major' from its tags ({known})")


def max_duration(pipe: Any) -> float:
    """Longest clip (s) the pipeline can make: its condition encoder stores this many silence latent frames."""
    return pipe.condition_encoder.silence_latent.shape[1] / pipe.latents_per_second


def check_duration(pipe: Any, duration: float) -> None:
    """Refuse a clip length the pipeline cannot make (<= 0, or longer than its silence latents reach)."""
    longest = max_duration(pipe)
    if not (duration > 0 and math.isfinite(duration)) or duration > longest:
        raise ValueError(f"duration {duration} s is out of range; choose 0 < duration <= {longest:.0f} s "
                         "(the generator was trained on the clip length in its music.json)")


def nfe_of(pipe: Any, num_steps: int, guidance_scale: float) -> int:
    """Transformer evaluations per clip: one per step, two with guidance (batched cond + null)."""
    steps = len(pipe.scheduler.timesteps) if getattr(pipe.scheduler, "timesteps", None) is not None else num_steps
    return steps * (2 if guidance_scale > 1 and not pipe.is_turbo else 1)


@torch.no_grad()
def generate_music(pipe: Any, prompts: list[str], lyrics: list[str], num_clips: int = 1, num_steps: int = 8,
                   guidance_scale: float = 1.0, shift: float | None = 3.0, duration: float | None = None, seed: int = 0,
                   batch_size: int = 16, guidance: str = "apg") -> MusicSamples:
    """`num_clips` clips per (prompt, lyrics) pair, in batches, from seeded noise (clip k of the run: seed + k).

    A turbo student (`AceStepTurboPipeline`) takes `num_steps` / `shift` from its trained grids
    (`shift=None`: its default one) and no guidance.
    """
    if len(lyrics) not in (1, len(prompts)):
        raise ValueError(f"give one lyrics string or one per prompt; got {len(lyrics)} lyrics for {len(prompts)} prompts")
    if guidance not in GUIDANCES:
        raise ValueError(f"guidance={guidance!r} is not valid; choose one of: {', '.join(GUIDANCES)}")
    info = music_info(pipe.config._name_or_path) if getattr(pipe.config, "_name_or_path", None) else {}
    duration = float(duration if duration is not None else info.get("clip_seconds", 2.048))
    check_duration(pipe, duration)
    lyrics = lyrics * len(prompts) if len(lyrics) == 1 else lyrics
    pairs = [(p, l) for p, l in zip(prompts, lyrics) for _ in range(num_clips)]
    device = pipe.transformer.device
    out, finals = [], []

    def keep_final(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        if step == len(pipeline.scheduler.timesteps) - 1:
            finals.append(tensors["latents"].float().cpu())
        return tensors

    with plain_cfg() if guidance == "cfg" else contextlib.nullcontext():
        for lo in range(0, len(pairs), batch_size):
            chunk = pairs[lo:lo + batch_size]
            generators = [torch.Generator(device=device).manual_seed(seed + lo + k) for k in range(len(chunk))]
            audio = pipe(prompt=[p for p, _ in chunk], lyrics=[l for _, l in chunk], audio_duration=duration,
                         num_inference_steps=num_steps, guidance_scale=guidance_scale, shift=shift,
                         generator=generators, output_type="pt", callback_on_step_end=keep_final).audios
            out.append(audio.float().cpu())
    return MusicSamples(torch.cat(out), [p for p, _ in pairs], [l for _, l in pairs],
                        int(pipe.sample_rate), nfe_of(pipe, num_steps, guidance_scale), torch.cat(finals))


class plain_cfg:
    """Context: the pipeline's APG step replaced by classifier-free guidance, cond + (w - 1)(cond - uncond)."""

    def __init__(self) -> None:
        import diffusers.pipelines.ace_step.pipeline_ace_step as module

        self.module = module
        self.original = module.normalized_guidance

    def __enter__(self) -> None:
        def cfg(pred_cond: Tensor, pred_uncond: Tensor, guidance_scale: float, **_: Any) -> Tensor:
            return pred_cond + guidance_scale * (pred_cond - pred_uncond)  # the pipeline passes w - 1

        self.module.normalized_guidance = cfg

    def __exit__(self, *exc: Any) -> None:
        self.module.normalized_guidance = self.original


class _TransformerAsModel(torch.nn.Module):
    """`model(x, timestep, encoder_hidden_states=, context_latents=)` -> velocity, for `fewstep.samplers.Denoiser`."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, context_latents: Tensor) -> Tensor:
        return transformer_velocity(self.transformer, x, timestep, {"encoder_hidden_states": encoder_hidden_states,
                                                                    "context_latents": context_latents})


def transformer_velocity(transformer: torch.nn.Module, x: Tensor, t: Tensor, conditions: dict[str, Tensor]) -> Tensor:
    """An ACE-Step transformer's velocity [B, T, C] at latents x [B, T, C] and times t [B] (t = 1 noise), as the pipeline calls it."""
    t = t.to(device=x.device, dtype=x.dtype)
    return transformer(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=conditions["encoder_hidden_states"],
                       context_latents=conditions["context_latents"]).sample


@torch.no_grad()
def music_denoiser(pipe: Any, prompts: list[str], lyrics: list[str], duration: float) -> tuple[Any, dict[str, Tensor], tuple[int, ...]]:
    """(Denoiser on the pipeline's flow path, per-clip conditioning {encoder_hidden_states, context_latents}, latent shape).

    What `AceStepPipeline` feeds its transformer for text-to-music, for fewstep's solvers, BOSS and
    `fit_sampler` (unguided: guidance_scale 1). Latents are [B, T, C]; t is the pipeline's timestep.
    """
    from fewstep.samplers import Denoiser, RectifiedFlowPath

    conditions = music_conditions(pipe, prompts, lyrics, duration)
    path = RectifiedFlowPath(int(pipe.scheduler.config.num_train_timesteps))
    denoiser = Denoiser(_TransformerAsModel(pipe.transformer), path, "flow_prediction")
    return denoiser, conditions, latent_shape(pipe, duration)


def latent_shape(pipe: Any, duration: float) -> tuple[int, int]:
    """(frames, channels) of the latents of a `duration`-second clip."""
    return math.ceil(duration * pipe.latents_per_second), int(pipe.transformer.config.audio_acoustic_hidden_dim)


@torch.no_grad()
def music_conditions(pipe: Any, prompts: list[str], lyrics: list[str], duration: float) -> dict[str, Tensor]:
    """{encoder_hidden_states [B, L, D], context_latents [B, T, 2C]}: what `AceStepPipeline` feeds its transformer for text-to-music."""
    from fewstep.models.acestep import text2music_context

    device = pipe.transformer.device
    text, text_mask, lyric, lyric_mask = pipe.encode_prompt(prompts, lyrics, device, audio_duration=duration)
    frames = math.ceil(30 * pipe.latents_per_second)
    silence = pipe.condition_encoder.silence_latent[:, :frames].to(device).expand(len(prompts), -1, -1)
    states, _ = pipe.condition_encoder(text, text_mask, lyric, lyric_mask, silence, torch.arange(len(prompts), device=device))
    context = text2music_context(pipe.condition_encoder, len(prompts), latent_shape(pipe, duration)[0]).to(device)
    return {"encoder_hidden_states": states, "context_latents": context}


@torch.no_grad()
def encode_captions(pipe: Any, prompts: list[str], lyrics: list[str], duration: float, batch_size: int = 64) -> Tensor:
    """`encoder_hidden_states` [N, L, D] of every (caption, lyrics), once, all padded to the same length L.

    The pipeline pads a batch to its longest caption; every chunk here is encoded with the
    longest caption of the whole list appended (then dropped), so each row is exactly what
    `music_conditions` gives in a batch that holds that caption.
    """
    from tqdm.auto import tqdm

    texts = [pipe._format_prompt(prompt=p, lyrics=l, audio_duration=duration) for p, l in zip(prompts, lyrics)]
    lengths = [len(pipe.tokenizer(text).input_ids) + len(pipe.tokenizer(lyric).input_ids) for text, lyric in texts]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    chunks = []
    for lo in tqdm(range(0, len(prompts), batch_size), desc="encode captions", leave=False):
        rows = [*range(lo, min(lo + batch_size, len(prompts))), longest]
        states = music_conditions(pipe, [prompts[i] for i in rows], [lyrics[i] for i in rows], duration)["encoder_hidden_states"]
        chunks.append(states[:-1].cpu())
    if len({c.shape[1] for c in chunks}) != 1:
        raise RuntimeError("captions encoded to different lengths; the condition encoder does not pad to the longest")
    return torch.cat(chunks)


def null_conditions(pipe: Any, conditions: dict[str, Tensor]) -> dict[str, Tensor]:
    """The unconditional input of classifier-free guidance: the learned `null_condition_emb` in place of the caption/lyrics."""
    states = conditions["encoder_hidden_states"]
    null = pipe.condition_encoder.null_condition_emb.to(device=states.device, dtype=states.dtype).expand_as(states)
    return {"encoder_hidden_states": null, "context_latents": conditions["context_latents"]}


def load_music_teacher(folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """The generator of `folder` as a frozen fewstep teacher (`LoadedTeacher` with the whole pipeline in `.pipeline`).

    Its network is the transformer (velocity in t, the pipeline's flow path with t fed directly),
    its samples are latents [frames, channels] of the clip length in music.json; conditioning
    comes from `music_conditions(teacher.pipeline, ...)`.
    """
    from fewstep.samplers import Denoiser, RectifiedFlowPath

    from .loading import LoadedTeacher

    if is_turbo_pipeline(folder):
        raise ValueError(f"{folder} is already a distilled turbo student; distil the generator it came from "
                         f"({music_info(folder).get('teacher', 'its teacher')}) instead")
    pipe = load_music_pipeline(folder, device=device)
    pipe.transformer.eval().requires_grad_(False)
    for module in (pipe.vae, pipe.text_encoder, pipe.condition_encoder):
        module.eval().requires_grad_(False)
    seconds = float(music_info(folder).get("clip_seconds", 2.048))
    path = RectifiedFlowPath(int(pipe.scheduler.config.num_train_timesteps))
    teacher = LoadedTeacher(network=pipe.transformer, denoiser=Denoiser(_TransformerAsModel(pipe.transformer), path, "flow_prediction"),
                            path=path, prediction_type="flow_prediction", sample_shape=latent_shape(pipe, seconds),
                            num_classes=0, scheduler_config=dict(pipe.scheduler.config), source=str(folder),
                            pipeline=pipe)
    return teacher


@dataclass
class MusicScores:
    """Fréchet distance on the `music` features (with a bootstrap interval), conditioning accuracy and speed."""

    fd: float
    fd_low: float
    fd_high: float
    accuracy: dict[str, float]  # instrument / key / tempo / all
    real_time_factor: float  # seconds of audio per second of compute (larger is faster)
    nfe: int

    def row(self) -> str:
        """'FD [low, high] | inst % | key % | tempo % | RTF' for a markdown table."""
        acc = self.accuracy
        return (f"{self.fd:.2f} [{self.fd_low:.2f}, {self.fd_high:.2f}] | {100 * acc['instrument']:.0f}% | "
                f"{100 * acc['key']:.0f}% | {100 * acc['tempo']:.0f}% | {self.real_time_factor:.0f}x")


def held_out_music(count: int, seconds: float | None = None) -> tuple[Tensor, list[str], list[str], dict[str, Tensor]]:
    """(audio [N, 1, T], captions, lyrics, labels) of the first `count` held-out synthetic clips (the FD reference)."""
    from fewstep.data.music import CLIP_SECONDS, MusicDataset
    from fewstep.metrics.music import music_arrays

    options = {"n_test": count, "seconds": seconds or CLIP_SECONDS}
    audio, labels = music_arrays("test", **options)
    captions = MusicDataset("test", **options).labels  # label records only: no second synthesis
    return audio, [c.prompt for c in captions], [c.lyrics for c in captions], labels


def score_music(samples: MusicSamples, labels: dict[str, Tensor], reference_features: Tensor, seconds: float,
                replicates: int = 200) -> MusicScores:
    """Score generated clips against real ones: FD (music features, bootstrap CI), accuracy of the requested labels."""
    from fewstep.metrics.frechet import frechet_distance_from_features
    from fewstep.metrics.music import build_music_feature_extractor, conditioning_accuracy, real_time_factor
    from fewstep.metrics.resample import bootstrap_fd

    extractor = build_music_feature_extractor()
    features = torch.cat([extractor(chunk) for chunk in samples.audio.split(256)]).double()
    interval = bootstrap_fd(features, reference_features.double(), replicates=replicates)
    fd = frechet_distance_from_features(features, reference_features.double())
    accuracy = conditioning_accuracy(samples.audio, labels["instrument"], labels["key"], labels["tempo"])
    duration = samples.audio.shape[0] * samples.audio.shape[-1] / samples.sample_rate
    return MusicScores(fd, interval.low, interval.high, accuracy, real_time_factor(duration, seconds), samples.nfe)
