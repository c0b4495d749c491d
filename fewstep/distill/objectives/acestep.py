"""ACE-Step-style music generator: flow matching of `AceStepTransformer1DModel` on autoencoder latents (Gong et al. 2025).

    fewstep train assets/configs/music_acestep.yaml     # model.type=acestep, model.autoencoder=<VAE folder>

Latents x0 [B, T, C] are the frozen VAE's encoded means of the clips (computed once, before
training). With t from a logit-normal distribution pushed through the time shift s
(t -> s t / (1 + (s - 1) t); ACE-Step trains with s = 3), x_t = (1 - t) x0 + t eps and

    L = E || v_theta(x_t, t, c) - (eps - x0) ||^2  +  repa_weight * (1 - cos(h(block_k), f_audio))

c is the caption ("piano, 120 bpm, C major", in the pipeline's prompt template) and the lyrics,
each replaced by the learned null embedding with its own dropout probability (classifier-free
guidance per condition); REPA (Yu et al. 2024) aligns a projection of transformer block k's
tokens with frozen frame features of the `music` feature network (1 - cosine, per token).
The export is a diffusers `AceStepPipeline` folder: `AceStepPipeline.from_pretrained(folder)`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep import batch_noise

from .base import Objective, Teacher, register_objective
from .music_autoencoder import check_audio_item

#: what the exported pipeline folder records about its training data (tags, clip length, rate).
MUSIC_INFO = "music.json"
#: numbers the tokenizer knows as words (bpm and duration metadata of the prompt template).
KNOWN_NUMBERS = range(0, 301)


@dataclass
class AceStepOptions:
    """Options of `objective.name=acestep`."""

    autoencoder: str = ""  # the trained VAE folder (`fewstep train assets/configs/music_autoencoder.yaml` -> run_dir/pipeline)
    logit_mean: float = 0.0  # t = shift(sigmoid(N(logit_mean, logit_std^2)))
    logit_std: float = 1.0
    shift: float = 3.0  # ACE-Step's training time shift
    tag_dropout: float = 0.15  # P(caption -> null embedding)
    lyric_dropout: float = 0.15  # P(lyrics -> null embedding), independent of the caption's
    repa_weight: float = 0.0  # 0 disables REPA; ACE-Step uses 1.0
    repa_layer: int = 0  # transformer block whose output is aligned
    text_dim: int = 32  # width of the frozen caption encoder
    text_seed: int = 0  # seed of its random weights
    lyric_layers: int = 1
    timbre_layers: int = 1
    sample_shift: float = 3.0  # time shift of the previews' grid (the pipeline's `shift`)
    encode_batch_size: int = 32  # clips per VAE call when encoding the dataset

    def __post_init__(self) -> None:
        for key in ("tag_dropout", "lyric_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must lie in [0, 1), got {getattr(self, key)}")
        if self.logit_std <= 0 or self.shift <= 0 or self.sample_shift <= 0:
            raise ValueError("objective.logit_std, objective.shift and objective.sample_shift must be > 0")
        if self.repa_weight < 0 or self.repa_layer < 0:
            raise ValueError("objective.repa_weight and objective.repa_layer must be >= 0")


def shifted_logit_normal(batch: int, generator: torch.Generator, device: torch.device, mean: float, std: float,
                         shift: float) -> Tensor:
    """t [B] = s u / (1 + (s - 1) u), u = sigmoid(N(mean, std^2)) (SD3's logit-normal with a flow time shift)."""
    u = torch.sigmoid(mean + std * batch_noise.randn((batch,), generator, device))
    return shift * u / (1 + (shift - 1) * u)


class MusicLatentDataset(Dataset):
    """Encoded clips: items {"latents" [T, C], "prompt", "lyrics", labels, optional "repa" [tokens, D]}."""

    def __init__(self, latents: Tensor, prompts: list[str], lyrics: list[str], labels: dict[str, Tensor],
                 repa: Tensor | None = None, sample_rate: int = 8000, clip_seconds: float = 2.048) -> None:
        self.latents, self.prompts, self.lyrics, self.labels, self.repa = latents, prompts, lyrics, labels, repa
        self.sample_rate, self.clip_seconds = sample_rate, clip_seconds

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"latents": self.latents[index], "prompt": self.prompts[index], "lyrics": self.lyrics[index],
                **{k: v[index] for k, v in self.labels.items()}}
        if self.repa is not None:
            item["repa"] = self.repa[index]
        return item


def _labels_of(dataset: Dataset, n: int) -> dict[str, Tensor]:
    keys = ("instrument", "key", "tempo")
    return {k: torch.tensor([int(dataset[i].get(k, -1)) for i in range(n)]) for k in keys}


@register_objective("acestep")
class AceStep(Objective):
    """Flow matching of an ACE-Step transformer + condition encoder on a frozen VAE's latents (model.type=acestep)."""

    Options = AceStepOptions
    teacher_use = "none"
    model_types = ("acestep",)
    main_network = "transformer"
    ema_networks = ("transformer", "condition_encoder")
    #: some parameters (the null embedding) get no gradient in a batch without dropout: DDP must not wait for them.
    find_unused_parameters = True

    def __init__(self, model: nn.Module, options: AceStepOptions | None = None, teacher: Teacher | None = None,
                 vae: nn.Module | None = None) -> None:
        from fewstep.models.acestep import ConditionsWithDropout, acestep_condition_encoder

        self.options = options = options or AceStepOptions()
        if vae is None:
            raise ValueError("objective.name=acestep needs the trained autoencoder: set objective.autoencoder=FOLDER "
                             "(written by `fewstep train assets/configs/music_autoencoder.yaml`, e.g. "
                             "assets/music/autoencoder)")
        self.vae = vae.eval().requires_grad_(False)
        latent = int(vae.config.decoder_input_channels)
        if model.config.audio_acoustic_hidden_dim != latent:
            raise ValueError(f"model.latent_channels={model.config.audio_acoustic_hidden_dim} but the autoencoder has "
                             f"{latent} latent channels; set model.latent_channels={latent}")
        if options.repa_layer >= model.config.num_hidden_layers:
            raise ValueError(f"objective.repa_layer={options.repa_layer} but the transformer has "
                             f"{model.config.num_hidden_layers} blocks; choose 0..{model.config.num_hidden_layers - 1}")
        width, heads = int(model.config.hidden_size), int(model.config.num_attention_heads)
        encoder = acestep_condition_encoder(width, options.text_dim, latent, heads, options.lyric_layers,
                                            options.timbre_layers, int(model.config.sliding_window))
        networks = {"transformer": model, "condition_encoder": ConditionsWithDropout(encoder)}
        super().__init__(networks, teacher)
        self.tokenizer: Any = None
        self.text_lengths = (0, 0)  # tokens of the training set's longest caption / lyrics (set by make_dataset)
        self.text_encoder: nn.Module | None = None
        self.repa_features: Any = None
        self.held_out: dict[str, list[str]] = {"prompt": [], "lyrics": []}
        self.info: dict[str, Any] = {}

    @classmethod
    def build(cls, model: nn.Module, options: Any, teacher: Teacher | None = None) -> "AceStep":
        """The objective for `model` with the frozen VAE of `options.autoencoder`."""
        return cls(model, options, teacher, vae=load_autoencoder(options.autoencoder) if options.autoencoder else None)

    def condition_encoder(self) -> nn.Module:
        """The diffusers `AceStepConditionEncoder` being trained (inside its dropout wrapper and any DDP wrapper)."""
        return _unwrap(self.networks["condition_encoder"]).encoder

    # -- data --------------------------------------------------------------------------

    @property
    def hop(self) -> int:
        return int(math.prod(self.vae.config.downsampling_ratios))

    @property
    def latents_per_second(self) -> float:
        return float(self.vae.config.sampling_rate) / self.hop

    def make_dataset(self, build: Callable[[], Dataset]) -> Dataset:
        """Encode every clip of the configured dataset once (VAE means) and set up the text side."""
        from fewstep.models.acestep import music_text_encoder, music_tokenizer, silence_latents

        audio_data = build()
        config = self.vae.config
        first = check_audio_item(audio_data, int(config.audio_channels), int(config.sampling_rate), self.hop)
        clip_seconds = first.shape[-1] / float(config.sampling_rate)
        n = len(audio_data)
        prompts = [audio_data[i]["prompt"] for i in range(n)]
        lyrics = [audio_data[i]["lyrics"] for i in range(n)]
        vocabulary = [" ".join(map(str, getattr(audio_data, k, ()))) for k in ("instruments", "keys", "tempos", "syllables")]
        self.tokenizer = music_tokenizer(self.template_texts(prompts, lyrics, clip_seconds) + vocabulary)
        self.text_encoder = music_text_encoder(len(self.tokenizer), self.options.text_dim, self.options.text_seed)
        formatted = [_format(p, l, clip_seconds) for p, l in zip(prompts, lyrics)]
        captions, lyric_texts = zip(*formatted)
        self.text_lengths = (max(map(len, self.tokenizer(list(captions)).input_ids)),
                             max(map(len, self.tokenizer(list(lyric_texts)).input_ids)))
        self.condition_encoder().silence_latent.copy_(silence_latents(self.vae))
        latents = self.encode_clips(audio_data)
        repa = None
        if self.options.repa_weight > 0:
            repa = self.repa_targets(audio_data)
            width = int(self.networks["transformer"].config.hidden_size)
            self.networks["repa_projector"] = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(),
                                                            nn.Linear(2 * width, repa.shape[-1]))
        held = audio_data.held_out() if hasattr(audio_data, "held_out") else audio_data
        count = min(len(held), 16)
        self.held_out = {"prompt": [held[i]["prompt"] for i in range(count)],
                         "lyrics": [held[i]["lyrics"] for i in range(count)]}
        self.info = {"dataset": type(audio_data).__name__, "clips": n, "sample_rate": int(config.sampling_rate),
                     "clip_seconds": clip_seconds, "latents_per_second": self.latents_per_second,
                     "tags": {k: list(getattr(audio_data, k)) for k in ("instruments", "keys", "tempos")
                              if hasattr(audio_data, k)}}
        return MusicLatentDataset(latents, prompts, lyrics, _labels_of(audio_data, n), repa,
                                  int(config.sampling_rate), clip_seconds)

    @staticmethod
    def template_texts(prompts: list[str], lyrics: list[str], clip_seconds: float) -> list[str]:
        """Every text the pipeline's prompt template produces for these captions, plus numbers and tags."""
        from diffusers import AceStepPipeline

        texts = [" ".join(str(i) for i in KNOWN_NUMBERS), "N/A"]
        fmt = AceStepPipeline._build_metadata_string
        texts.append(fmt(bpm=120, keyscale="C major", timesignature="4", audio_duration=clip_seconds))
        for prompt, lyric in zip(prompts, lyrics):
            texts.extend(_format(prompt, lyric, clip_seconds))
        return texts

    @torch.no_grad()
    def encode_clips(self, dataset: Dataset) -> Tensor:
        """[N, T, C] VAE latent means of every clip (batched, with a progress bar)."""
        from tqdm.auto import tqdm

        batch = self.options.encode_batch_size
        out = []
        for lo in tqdm(range(0, len(dataset), batch), desc="encode clips", leave=False):
            audio = torch.stack([dataset[i]["audio"] for i in range(lo, min(lo + batch, len(dataset)))])
            out.append(self.vae.encode(audio.to(next(self.vae.parameters()).device)).latent_dist.mean.transpose(1, 2).cpu())
        return torch.cat(out).float()

    @torch.no_grad()
    def repa_targets(self, dataset: Dataset) -> Tensor:
        """[N, tokens, D] frozen `music` feature-net frame features of every clip, at the transformer's token rate."""
        from fewstep.metrics.music import load_music_features

        net = load_music_features().eval()
        if int(net.config.sample_rate) != int(self.vae.config.sampling_rate):
            raise ValueError(f"REPA aligns with the shipped music feature net, which takes {net.config.sample_rate} Hz "
                             f"audio, but the data is {self.vae.config.sampling_rate} Hz; set objective.repa_weight=0 "
                             "(or train a feature net for your rate with scripts/train_music_features.py)")
        tokens = math.ceil(dataset[0]["audio"].shape[-1] / self.hop / self.networks["transformer"].config.patch_size)
        out = []
        for lo in range(0, len(dataset), 64):
            audio = torch.stack([dataset[i]["audio"] for i in range(lo, min(lo + 64, len(dataset)))])
            frames = net.frame_features(audio)  # [B, D, F]: the last conv block before its time average
            out.append(nn.functional.adaptive_avg_pool1d(frames, tokens).transpose(1, 2))
        return torch.cat(out).float()

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Items must be the encoded clips `make_dataset` made, with latents of the model's channels."""
        item = dataset[0]
        if not isinstance(item, dict) or "latents" not in item:
            raise ValueError("objective.name=acestep trains on audio clips; use data.name=music or data.name=audio_folder")

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        """One group: the transformer, the condition encoder and (REPA) the projection head."""
        return [{"params": [p for net in self.networks.values() for p in net.parameters() if p.requires_grad]}]

    # -- loss --------------------------------------------------------------------------

    def _frozen_to(self, device: torch.device) -> None:
        for module in (self.vae, self.text_encoder):
            if next(module.parameters()).device != device:
                module.to(device)

    def tokenize(self, texts: list[str], length: int, limit: int) -> Any:
        """Token ids and mask [B, L], padded to at least `length` (the training set's longest text), at most `limit`.

        The transformer's output depends on how far its conditions are padded, so a fixed padding
        makes a clip's loss independent of the other clips in its batch (and of how a global batch
        is split over processes).
        """
        encoding = self.tokenizer(texts, padding="longest", truncation=True, max_length=limit, return_tensors="pt")
        if encoding.input_ids.shape[1] < min(length, limit):
            encoding = self.tokenizer(texts, padding="max_length", truncation=True, max_length=min(length, limit),
                                      return_tensors="pt")
        return encoding

    def encode_text(self, prompts: list[str], lyrics: list[str], device: torch.device, clip_seconds: float) -> tuple[Tensor, ...]:
        """(caption states [B, Lt, D], caption mask, lyric embeddings [B, Ll, D], lyric mask) as the pipeline makes them."""
        texts = [_format(p, l, clip_seconds) for p, l in zip(prompts, lyrics)]
        caption = self.tokenize([t for t, _ in texts], self.text_lengths[0], 256)
        lyric = self.tokenize([l for _, l in texts], self.text_lengths[1], 2048)
        with torch.no_grad():
            text_hidden = self.text_encoder(input_ids=caption.input_ids.to(device)).last_hidden_state
            lyric_hidden = self.text_encoder.get_input_embeddings()(lyric.input_ids.to(device))
        return text_hidden, caption.attention_mask.to(device).bool(), lyric_hidden, lyric.attention_mask.to(device).bool()

    def conditions(self, batch: dict[str, Any], generator: torch.Generator, drop: bool = True) -> Tensor:
        """Packed conditions [B, L, width] of a batch, with per-condition CFG dropout when `drop`."""
        from fewstep.models.acestep import timbre_frames

        device = batch["latents"].device
        B = batch["latents"].shape[0]
        clip_seconds = batch["latents"].shape[1] / self.latents_per_second
        text_hidden, text_mask, lyric_hidden, lyric_mask = self.encode_text(list(batch["prompt"]), list(batch["lyrics"]),
                                                                            device, clip_seconds)
        drop_text = drop_lyrics = None
        if drop:
            drop_text = batch_noise.rand((B,), generator, device) < self.options.tag_dropout
            drop_lyrics = batch_noise.rand((B,), generator, device) < self.options.lyric_dropout
        return self.networks["condition_encoder"](text_hidden, text_mask, lyric_hidden, lyric_mask,
                                                  timbre_frames(self.latents_per_second), drop_text, drop_lyrics)

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        from fewstep.models.acestep import text2music_context

        opts = self.options
        x0 = batch["latents"]
        device = x0.device
        self._frozen_to(device)
        B, T, _ = x0.shape
        encoder_states = self.conditions(batch, generator)
        t = shifted_logit_normal(B, generator, device, opts.logit_mean, opts.logit_std, opts.shift)
        eps = batch_noise.randn(x0.shape, generator, device, x0.dtype)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        context = text2music_context(self.condition_encoder(), B, T).to(x0.dtype)
        transformer = self.networks["transformer"]
        captured: list[Tensor] = []
        hook = None
        if opts.repa_weight > 0:
            block = _unwrap(transformer).layers[opts.repa_layer]
            hook = block.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            v = transformer(hidden_states=x_t, timestep=t, timestep_r=t, encoder_hidden_states=encoder_states,
                            context_latents=context).sample
        finally:
            if hook is not None:
                hook.remove()
        flow = torch.mean((v.float() - (eps - x0).float()) ** 2)
        out = {"flow": flow.detach()}
        loss = flow
        if opts.repa_weight > 0:
            repa = repa_loss(self.networks["repa_projector"](captured[0]), batch["repa"])
            loss = loss + opts.repa_weight * repa
            out["repa"] = repa.detach()
        return {"loss": loss, **out}

    # -- sampling and export ---------------------------------------------------------------

    def pipeline(self, networks: dict[str, nn.Module], scheduler: Any = None) -> Any:
        """An `AceStepPipeline` of `networks` (transformer, condition encoder) with the frozen VAE and text encoder."""
        from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

        scheduler = scheduler or FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
        pipe = AceStepPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                               transformer=_unwrap(networks["transformer"]),
                               condition_encoder=_unwrap(networks["condition_encoder"]).encoder,
                               scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Audio [B, C, T] for the held-out captions/lyrics number `class_labels` (cycled), Euler on the shift grid."""
        prompts, lyrics = held_out_captions(self.held_out, class_labels)
        self._frozen_to(class_labels.device)
        pipe = self.pipeline(networks)
        return pipe(prompt=prompts, lyrics=lyrics, audio_duration=self.info["clip_seconds"], num_inference_steps=num_steps,
                    guidance_scale=guidance_scale, shift=self.options.sample_shift, generator=generator).audios

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], networks: dict[str, nn.Module], stem: Path,
                      num_classes: int, per_class: int) -> Path:
        """`stem`.png: spectrograms of 8 samples titled by their captions, and `stem`_k.wav for each."""
        return write_music_preview(sample_fn, self.held_out["prompt"], int(self.vae.config.sampling_rate), stem)

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        """`AceStepPipeline.save_pretrained(folder)` (Euler scheduler, ACE-Step's) + music.json (tags, clip length)."""
        pipe = self.pipeline({k: copy.deepcopy(_unwrap(v)).eval() for k, v in networks.items()})
        pipe.save_pretrained(str(folder))
        (Path(folder) / MUSIC_INFO).write_text(json.dumps(self.info, indent=2))


def held_out_captions(held_out: dict[str, list[str]], numbers: Tensor) -> tuple[list[str], list[str]]:
    """(prompts, lyrics) of the held-out captions number `numbers` [B] (cycled): what previews sample."""
    index = [int(i) % len(held_out["prompt"]) for i in numbers.tolist()]
    return [held_out["prompt"][i] for i in index], [held_out["lyrics"][i] for i in index]


def write_music_preview(sample_fn: Callable[[Tensor], Tensor], prompts: list[str], sample_rate: int, stem: Path) -> Path:
    """`stem`.png: spectrograms of the clips for the first 8 held-out `prompts` (titled by them), and `stem`_k.wav for each."""
    from fewstep.audio import save_spectrogram_grid, write_audio

    count = min(8, len(prompts))
    audio = sample_fn(torch.arange(count)).float().cpu()
    for k in range(count):
        write_audio(stem.parent / f"{stem.name}_{k}.wav", audio[k], sample_rate)
    return save_spectrogram_grid(audio[:, 0], sample_rate, stem.with_suffix(".png"), titles=prompts[:count])


def _format(prompt: str, lyrics: str, clip_seconds: float) -> tuple[str, str]:
    """(caption text, lyric text) in `AceStepPipeline`'s prompt template (default metadata, no bpm/key fields)."""
    from diffusers import AceStepPipeline

    return AceStepPipeline._format_prompt(_TEMPLATE, prompt, lyrics, audio_duration=clip_seconds)


class _Template:
    """Stand-in `self` for `AceStepPipeline._format_prompt` (it only calls the static metadata builder)."""

    @staticmethod
    def _build_metadata_string(**kwargs: Any) -> str:
        from diffusers import AceStepPipeline

        return AceStepPipeline._build_metadata_string(**kwargs)


_TEMPLATE = _Template()


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def repa_loss(projected: Tensor, target: Tensor) -> Tensor:
    """REPA (Yu et al. 2024): mean over tokens of 1 - cos(projected, target); both [B, tokens, D]; in [0, 2]."""
    if projected.shape != target.shape:
        raise ValueError(f"REPA: projected features {tuple(projected.shape)} and targets {tuple(target.shape)} differ")
    return (1 - nn.functional.cosine_similarity(projected.float(), target.float(), dim=-1)).mean()


def load_autoencoder(folder: str | Path) -> nn.Module:
    """The frozen `AutoencoderOobleck` saved by `music_autoencoder` (a folder with config.json + weights)."""
    from diffusers import AutoencoderOobleck

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"objective.autoencoder={str(folder)!r} is not a saved autoencoder (no config.json); train "
                                "one with `fewstep train assets/configs/music_autoencoder.yaml` and pass its "
                                "run_dir/pipeline, or use the shipped assets/music/autoencoder")
    return AutoencoderOobleck.from_pretrained(str(path)).eval().requires_grad_(False)
