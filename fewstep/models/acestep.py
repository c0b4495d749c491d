"""ACE-Step-style music generator parts at toy scale, built from diffusers' own classes.

ACE-Step 1.5 (Gong et al. 2025; diffusers' `AceStepPipeline`) generates music as latents of an
`AutoencoderOobleck` (a waveform VAE) with `AceStepTransformer1DModel`, a DiT that
cross-attends to the packed conditions of `AceStepConditionEncoder` (caption through a frozen
text encoder, lyric tokens through its own lyric encoder, a timbre reference). Nothing here
replaces those classes: these functions size them for a CPU (8 kHz mono, latents at 31.25
frames/s) and add the small pieces a trainer needs that the pipeline does inline:

- `music_tokenizer` / `music_text_encoder`: a word-level tokenizer over the pipeline's prompt
  template plus the music vocabulary, and a tiny frozen `Qwen3Model` (random weights, like a
  frozen pretrained encoder in that it is never trained; the condition encoder learns to read it);
- `encode_conditions`: the condition encoder's forward, with per-condition classifier-free
  guidance dropout (caption and lyrics replaced by the learned `null_condition_emb`
  independently; both dropped = the pipeline's unconditional input);
- `text2music_context`: the `context_latents` the pipeline feeds for text-to-music;
- `fold_latent_scale`: rescale the VAE so its latents have unit variance (the pipeline has no
  latent scaling factor), by changing weights, so the folder stays a plain `AutoencoderOobleck`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

#: the special tokens of the toy tokenizer (the pipeline appends "<|endoftext|>" to every text).
PAD, UNK, EOS = "[PAD]", "[UNK]", "<|endoftext|>"
#: seconds of timbre reference the pipeline feeds when no reference audio is given (30 s of silence latents).
TIMBRE_SECONDS = 30
#: frames stored in `AceStepConditionEncoder.silence_latent` (the class's own default length).
SILENCE_FRAMES = 15000


def oobleck_autoencoder(latent_channels: int = 8, width: int = 16, downsampling_ratios: Sequence[int] = (4, 4, 16),
                        sample_rate: int = 8000, audio_channels: int = 1) -> nn.Module:
    """An `AutoencoderOobleck` (Stable Audio's waveform VAE) with `latent_channels` latents per prod(ratios) samples."""
    from diffusers import AutoencoderOobleck

    ratios = [int(r) for r in downsampling_ratios]
    return AutoencoderOobleck(
        encoder_hidden_size=2 * latent_channels,  # the encoder emits mean and scale
        downsampling_ratios=ratios, channel_multiples=[2**i for i in range(len(ratios))],
        decoder_channels=width, decoder_input_channels=latent_channels, audio_channels=audio_channels,
        sampling_rate=sample_rate,
    )


def clone_model(model: nn.Module) -> nn.Module:
    """A copy of a diffusers model via config + state dict (`copy.deepcopy` fails on weight-normalised layers after a forward pass)."""
    clone = type(model).from_config(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(next(model.parameters()).device)


def hop_length(vae: nn.Module) -> int:
    """Waveform samples per latent frame of an `AutoencoderOobleck`."""
    return int(math.prod(vae.config.downsampling_ratios))


def acestep_transformer(latent_channels: int = 8, width: int = 64, num_layers: int = 2, num_heads: int = 2,
                        patch_size: int = 2, sliding_window: int = 16) -> nn.Module:
    """An `AceStepTransformer1DModel` (DiT with AdaLN, RoPE, cross-attention) sized by `width` / `num_layers`."""
    from diffusers import AceStepTransformer1DModel

    if width % num_heads:
        raise ValueError(f"model.width={width} must be divisible by model.num_heads={num_heads}")
    return AceStepTransformer1DModel(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_heads, head_dim=width // num_heads,
        in_channels=3 * latent_channels,  # context (source latents + chunk mask) and the noisy latents
        audio_acoustic_hidden_dim=latent_channels, patch_size=patch_size, sliding_window=sliding_window,
    )


def acestep_condition_encoder(width: int, text_dim: int, latent_channels: int, num_heads: int = 2,
                              lyric_layers: int = 1, timbre_layers: int = 1, sliding_window: int = 16) -> nn.Module:
    """An `AceStepConditionEncoder` (caption projector, lyric encoder, timbre encoder, null embedding)."""
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder

    return AceStepConditionEncoder(
        hidden_size=width, intermediate_size=2 * width, text_hidden_dim=text_dim, timbre_hidden_dim=latent_channels,
        num_lyric_encoder_hidden_layers=lyric_layers, num_timbre_encoder_hidden_layers=timbre_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, head_dim=width // num_heads,
        sliding_window=sliding_window,
    )


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=EOS, behavior="isolated"), pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=False),
    ])


def words_of(texts: Iterable[str]) -> list[str]:
    """The tokenizer's words of `texts` (lower-cased, punctuation and numbers split off), in first-seen order."""
    pre = _pre_tokenizer()
    seen: dict[str, None] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            seen.setdefault(word, None)
    return list(seen)


def music_tokenizer(texts: Iterable[str]) -> Any:
    """A word-level `PreTrainedTokenizerFast` whose vocabulary is every word of `texts` (others -> [UNK])."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, UNK: 1, EOS: 2}
    for word in words_of(texts):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def unknown_words(tokenizer, text: str) -> list[str]:
    """Words of `text` that `tokenizer` maps to its unknown token (what the model never saw in training)."""
    unk = tokenizer.unk_token_id
    words = words_of([text])
    return [w for w in words if tokenizer.convert_tokens_to_ids(w) == unk and w not in (EOS.lower(),)]


def music_text_encoder(vocab_size: int, dim: int = 32, seed: int = 0) -> nn.Module:
    """A one-layer `Qwen3Model` with seeded random weights: the frozen caption encoder (ACE-Step uses Qwen3-Embedding)."""
    from transformers import Qwen3Config, Qwen3Model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        config = Qwen3Config(vocab_size=vocab_size, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=dim // 2, max_position_embeddings=1024)
        model = Qwen3Model(config)
    finally:
        torch.random.set_rng_state(state)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def silence_latents(vae: nn.Module, frames: int = SILENCE_FRAMES) -> Tensor:
    """[1, frames, C]: the VAE's latent of digital silence, tiled (the pipeline's `silence_latent`)."""
    param = next(vae.parameters())
    clip = torch.zeros(1, int(vae.config.audio_channels), 16 * hop_length(vae), device=param.device, dtype=param.dtype)
    latent = vae.encode(clip).latent_dist.mean[0].T  # [16, C]; the middle frames have no edge effects
    frame = latent[latent.shape[0] // 2]
    return frame.expand(frames, -1).unsqueeze(0).contiguous().float().cpu()


def timbre_frames(latents_per_second: float) -> int:
    """Latent frames of timbre reference the pipeline feeds without reference audio (30 s)."""
    return math.ceil(TIMBRE_SECONDS * latents_per_second)


def encode_conditions(condition_encoder: nn.Module, text_hidden: Tensor, text_mask: Tensor, lyric_hidden: Tensor,
                      lyric_mask: Tensor, timbre_length: int, drop_text: Tensor | None = None,
                      drop_lyrics: Tensor | None = None) -> Tensor:
    """`AceStepConditionEncoder.forward` without reference audio, with per-condition CFG dropout.

    text_hidden [B, Lt, text_dim], lyric_hidden [B, Ll, text_dim] (the text encoder's token embeddings),
    masks [B, L] bool; drop_text / drop_lyrics [B] bool: that sample's caption / lyric rows become
    the learned null embedding; a sample with both dropped gets the null embedding everywhere, as
    the pipeline's unconditional branch does. Returns the packed conditions [B, L, width].
    The timbre embedding of the silence reference is computed once and shared by the batch.
    """
    from diffusers.pipelines.ace_step.modeling_ace_step import _pack_sequences

    B = text_hidden.shape[0]
    null = condition_encoder.null_condition_emb.to(text_hidden.dtype)
    text = condition_encoder.text_projector(text_hidden)
    lyrics = condition_encoder.lyric_encoder(inputs_embeds=lyric_hidden, attention_mask=lyric_mask)
    if drop_text is not None:
        text = torch.where(drop_text[:, None, None], null.expand_as(text), text)
    if drop_lyrics is not None:
        lyrics = torch.where(drop_lyrics[:, None, None], null.expand_as(lyrics), lyrics)
    silence = condition_encoder.silence_latent[:, :timbre_length].to(text.dtype)
    order = torch.zeros(1, dtype=torch.long, device=text.device)
    timbre, timbre_mask = condition_encoder.timbre_encoder(silence, order)
    timbre, timbre_mask = timbre.expand(B, -1, -1), timbre_mask.expand(B, -1)
    packed, mask = _pack_sequences(lyrics, timbre, lyric_mask, timbre_mask)
    packed, _ = _pack_sequences(packed, text, mask, text_mask)
    if drop_text is not None and drop_lyrics is not None:
        both = (drop_text & drop_lyrics)[:, None, None]
        packed = torch.where(both, null.expand_as(packed), packed)
    return packed


class ConditionsWithDropout(nn.Module):
    """An `AceStepConditionEncoder` whose forward is `encode_conditions` (one call, so DDP sees it).

    The trainer's network; `.encoder` is the diffusers module the pipeline is saved with.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def config(self) -> Any:
        return self.encoder.config

    def forward(self, text_hidden: Tensor, text_mask: Tensor, lyric_hidden: Tensor, lyric_mask: Tensor,
                timbre_length: int, drop_text: Tensor | None = None, drop_lyrics: Tensor | None = None) -> Tensor:
        """Packed conditions [B, L, width]; see `encode_conditions`."""
        return encode_conditions(self.encoder, text_hidden, text_mask, lyric_hidden, lyric_mask, timbre_length,
                                 drop_text, drop_lyrics)


def text2music_context(condition_encoder: nn.Module, batch: int, length: int) -> Tensor:
    """[B, length, 2C] context latents of text-to-music: silence source latents and an all-ones chunk mask."""
    silence = condition_encoder.silence_latent[:, :length].expand(batch, -1, -1)
    return torch.cat([silence, torch.ones_like(silence)], dim=-1)


@torch.no_grad()
def fold_latent_scale(vae: nn.Module, scale: float) -> None:
    """Divide the VAE's latent means by `scale` (and multiply the decoder input by it) in the weights.

    Decoding `encode(x).mean` is unchanged; the latents of the data get std / `scale`. The
    posterior's std channels are left as they were (only the mean is used as data here).
    """
    if not scale > 0:
        raise ValueError(f"latent scale must be > 0, got {scale}")
    latent = int(vae.config.decoder_input_channels)
    out_conv = vae.encoder.conv2  # weight-normalised: weight = g * v / |v| per output channel
    out_conv.weight_g[:latent] /= scale
    out_conv.bias[:latent] /= scale
    vae.decoder.conv1.weight_g *= scale
