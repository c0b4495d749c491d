"""ACE-Step-style turbo: distil the music generator into a guidance-free student on fixed time grids (ACE-Step v1.5; DMD2).

    fewstep train assets/configs/music_turbo.yaml     # model.type=pretrained, model.pretrained=assets/music/generator

The student is a copy of the teacher's transformer that runs Euler steps on fixed grids, the
same steps `AceStepPipeline` takes: ACE-Step's grid of n steps at time shift s
(`fewstep.pipelines.turbo.acestep_times`), for every n in `steps` and s in `shifts`; each
micro-batch draws one grid (joint training over shifts 1, 2, 3 by default, as ACE-Step's turbo
model). Its sample from noise z is its x0 prediction `x - t v` after the last step.

`method=dmd` (default): distribution matching distillation (DMD, Yin et al. 2024, arXiv
2311.18828; DMD2, arXiv 2405.14867), the loss `msd` uses (`fewstep.distill.distribution_matching`):

- generator sample: the student's chain from z up to a random step k of the drawn grid without
  gradient, then its x0 prediction at t_k with gradient (DMD2's backward simulation, here with
  the deterministic Euler steps inference takes);
- real score: the frozen teacher with classifier-free guidance `guidance_scale` against the
  learned null condition (the student then needs none); fake score: a critic, a trainable copy
  of the teacher, trained by flow matching on the student's samples, `critic_steps` updates per
  generator update;
- generator loss: `0.5 ||x - sg(x - grad)||^2`, grad = (x0_fake - x0_real) / mean|x - x0_real|.

`method=regression` (baseline): the student's whole chain from z (back-propagated through every
step) regresses the guided teacher's ODE endpoint from the same z (`regression_pairs` pairs made
once, before training, by the teacher's own pipeline: `regression_steps` Euler steps at shift
`regression_shift` with the same CFG).

Captions and lyrics go through the teacher's frozen text and condition encoders (shared by
teacher, critic and student). The export is an `AceStepTurboPipeline` folder (the teacher's
components with the student's transformer; its config lists the grids).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from fewstep import batch_noise
from fewstep.pipelines.music import transformer_velocity as velocity

from .. import distribution_matching
from .acestep import MUSIC_INFO, held_out_captions, write_music_preview
from .base import Objective, Teacher, register_objective

METHODS = ("dmd", "regression")
#: held-out captions kept for previews.
PREVIEW_CAPTIONS = 16


@dataclass
class AceStepTurboOptions:
    """Options of `objective.name=acestep_turbo` (see the module docstring)."""

    method: str = "dmd"  # dmd (distribution matching) | regression (teacher ODE endpoints; the baseline)
    steps: list[int] = field(default_factory=lambda: [8])  # step counts of the student's grids
    shifts: list[float] = field(default_factory=lambda: [3.0, 2.0, 1.0])  # ACE-Step time shifts; the first is the default
    times: list[float] = field(default_factory=list)  # one custom grid instead of steps x shifts (1.0 first, decreasing)
    guidance_scale: float = 2.0  # the teacher's CFG scale in the real score (dmd) and the pairs (regression)
    critic_steps: int = 2  # critic updates per student update (dmd); DMD2 uses 5
    critic_lr_scale: float = 1.0  # critic LR = optim.lr x critic_lr_scale
    t_min: float = 0.02  # DM / critic times t ~ U[t_min, t_max]
    t_max: float = 0.98
    regression_pairs: int = 512  # regression: (noise, teacher endpoint) pairs
    regression_steps: int = 60  # regression: the teacher's Euler steps per pair (ACE-Step's default)
    regression_shift: float = 3.0
    pair_batch_size: int = 64
    seed: int = 0  # noises of the pairs

    def __post_init__(self) -> None:
        from fewstep.pipelines.turbo import check_times

        if self.method not in METHODS:
            raise ValueError(f"objective.method={self.method!r} is not a method; choose one of: {', '.join(METHODS)}")
        if self.times:
            self.times = check_times(self.times, "objective.times")
        if not self.steps or any(int(n) < 1 for n in self.steps):
            raise ValueError(f"objective.steps must list step counts >= 1, got {self.steps}")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"objective.steps lists a step count twice: {self.steps}")
        if not self.shifts or any(not float(s) > 0 for s in self.shifts) or len(set(self.shifts)) != len(self.shifts):
            raise ValueError(f"objective.shifts must list distinct time shifts > 0 (ACE-Step: 1, 2, 3), got {self.shifts}")
        self.steps, self.shifts = [int(n) for n in self.steps], [float(s) for s in self.shifts]
        if self.guidance_scale < 1:
            raise ValueError(f"objective.guidance_scale must be >= 1 (1 = no guidance), got {self.guidance_scale}")
        if self.critic_steps < 1:
            raise ValueError(f"objective.critic_steps must be >= 1 (the critic must follow the student), got {self.critic_steps}")
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 < objective.t_min < objective.t_max <= 1, got {self.t_min} and {self.t_max}")
        for key in ("regression_pairs", "regression_steps", "pair_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must be >= 1, got {getattr(self, key)}")
        if self.critic_lr_scale <= 0 or self.regression_shift <= 0:
            raise ValueError("objective.critic_lr_scale and objective.regression_shift must be > 0")


class MusicCaptionDataset(Dataset):
    """Encoded captions: items {"prompt", "lyrics", "encoder_hidden_states" [L, D], label indices} (+ "noise" / "target" [T, C])."""

    def __init__(self, prompts: list[str], lyrics: list[str], labels: dict[str, Tensor], states: Tensor,
                 pairs: tuple[Tensor, Tensor] | None = None) -> None:
        self.prompts, self.lyrics, self.labels, self.states, self.pairs = prompts, lyrics, labels, states, pairs

    def __len__(self) -> int:
        return len(self.prompts) if self.pairs is None else self.pairs[0].shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = index % len(self.prompts)
        item = {"prompt": self.prompts[i], "lyrics": self.lyrics[i], "encoder_hidden_states": self.states[i],
                **{k: v[i] for k, v in self.labels.items()}}
        if self.pairs is not None:
            item["noise"], item["target"] = self.pairs[0][index], self.pairs[1][index]
        return item


def captions_of(dataset: Dataset) -> tuple[list[str], list[str], dict[str, Tensor]]:
    """(prompts, lyrics, labels) of a music dataset; from its label records when it has them (no audio synthesis)."""
    from fewstep.data.music import MusicDataset

    if isinstance(dataset, MusicDataset):
        records = dataset.labels
        labels = {"instrument": torch.tensor([dataset.instruments.index(r.instrument) for r in records]),
                  "key": torch.tensor([dataset.keys.index(r.key) for r in records]),
                  "tempo": torch.tensor([dataset.tempos.index(r.tempo) for r in records])}
        return [r.prompt for r in records], [r.lyrics for r in records], labels
    items = [dataset[i] for i in range(len(dataset))]
    if not items or not all(isinstance(it, dict) and "prompt" in it for it in items[:1]):
        raise ValueError("objective.name=acestep_turbo needs captioned music: use data.name=music or data.name=audio_folder")
    labels = {k: torch.tensor([int(it.get(k, -1)) for it in items]) for k in ("instrument", "key", "tempo")}
    return [it["prompt"] for it in items], [it.get("lyrics", "") for it in items], labels


def check_music_teacher(teacher: Teacher | None) -> Any:
    """The teacher's `AceStepPipeline`, after checking the teacher is an ACE-Step-style music generator."""
    if teacher is None or getattr(teacher, "pipeline", None) is None:
        source = getattr(teacher, "source", None)
        found = ""
        if source is not None:
            from fewstep.pipelines.music import pipeline_class_name

            found = f"; model.pretrained={source} is a {pipeline_class_name(source) or 'folder without model_index.json'}"
        raise ValueError("objective.name=acestep_turbo distils an ACE-Step-style music generator: set model.type=pretrained "
                         "and model.pretrained to an AceStepPipeline folder (e.g. assets/music/generator, or the "
                         f"run_dir/pipeline of `fewstep train assets/configs/music_acestep.yaml`){found}")
    return teacher.pipeline


def euler_chain(network: nn.Module, z: Tensor, conditions: dict[str, Tensor], times: list[float], last: int | None = None,
                grad: str = "none") -> Tensor:
    """The student's x0 prediction `x - t v` at times[last] after Euler steps from noise z [B, T, C] along `times`.

    These are `AceStepPipeline`'s steps (its scheduler's Euler step to the next time; the step
    from the last time to 0 lands on x0), so `last=None` (the whole grid) is what the pipeline
    samples. `grad`: "none", "last" (only the evaluation at times[last] keeps the graph: DMD2's
    backward simulation) or "all" (back-propagation through the whole chain: regression).
    """
    last = len(times) - 1 if last is None else last
    x = z
    for i in range(last + 1):
        t = torch.full((z.shape[0],), times[i], device=z.device, dtype=z.dtype)
        keep = torch.is_grad_enabled() and (grad == "all" or (grad == "last" and i == last))
        with torch.set_grad_enabled(keep):
            v = velocity(network, x, t, conditions)
            if i == last:
                return x - times[i] * v
            x = x + (times[i + 1] - times[i]) * v
    raise AssertionError("unreachable")


@register_objective("acestep_turbo")
class AceStepTurbo(Objective):
    """A guidance-free few-step student of an ACE-Step-style generator, by DMD2 or trajectory regression (module docstring)."""

    Options = AceStepTurboOptions
    teacher_use = "required"
    model_types = ("pretrained",)
    main_network = "student"
    ema_networks = ("student",)

    def __init__(self, model: nn.Module, options: AceStepTurboOptions, teacher: Teacher | None) -> None:
        from fewstep.pipelines.music import music_info
        from fewstep.pipelines.turbo import student_grids

        self.pipe = check_music_teacher(teacher)
        assert teacher is not None
        self.options = options
        self.grids = student_grids(options.steps, options.shifts, options.times or None)
        networks: dict[str, nn.Module] = {"student": model}
        if options.method == "dmd":
            networks["critic"] = copy.deepcopy(teacher.network).requires_grad_(True).train()
            self.phases = ("critic",) * options.critic_steps + ("generator",)
        else:
            self.phases = ("generator",)
        super().__init__(networks, teacher)
        self.info = music_info(teacher.source) if teacher.source else {}
        self.clip_seconds = float(self.info.get("clip_seconds", teacher.sample_shape[0] / self.pipe.latents_per_second))
        self.held_out: dict[str, list[str]] = {"prompt": [], "lyrics": []}

    # -- data ----------------------------------------------------------------------------

    def make_dataset(self, build: Callable[[], Dataset]) -> Dataset:
        """The configured dataset's captions, encoded once by the teacher's frozen encoders (+ its ODE pairs for regression)."""
        from fewstep.pipelines.music import encode_captions

        data = build()
        prompts, lyrics, labels = captions_of(data)
        held = data.held_out() if hasattr(data, "held_out") else data
        held_prompts, held_lyrics, _ = captions_of(held)
        self.held_out = {"prompt": held_prompts[:PREVIEW_CAPTIONS], "lyrics": held_lyrics[:PREVIEW_CAPTIONS]}
        self.check_vocabulary(prompts)
        self.pipe.to(self.teacher.network.device)
        states = encode_captions(self.pipe, prompts, lyrics, self.clip_seconds)
        pairs = self.teacher_pairs(prompts, lyrics) if self.options.method == "regression" else None
        return MusicCaptionDataset(prompts, lyrics, labels, states, pairs)

    def check_vocabulary(self, prompts: list[str]) -> None:
        """Refuse captions with words the teacher's tokenizer does not know (another dataset than the teacher's)."""
        from fewstep.pipelines.music import check_prompts

        check_prompts(self.pipe, sorted(set(prompts)), self.info)

    @torch.no_grad()
    def teacher_pairs(self, prompts: list[str], lyrics: list[str]) -> tuple[Tensor, Tensor]:
        """(noise [N, T, C], the guided teacher's Euler ODE endpoint [N, T, C]) for the first N captions (cycled).

        Chunks of `pair_batch_size` are split across the processes of a launch (`shard_map`).
        """
        from fewstep.pipelines.music import latent_shape, plain_cfg

        from ..processes import shard_map

        opts = self.options
        device = self.teacher.network.device
        self.pipe.to(device)
        shape = latent_shape(self.pipe, self.clip_seconds)
        noise = torch.randn((opts.regression_pairs, *shape), generator=torch.Generator().manual_seed(opts.seed))

        def endpoints(chunk: int) -> Tensor:
            rows = range(chunk * opts.pair_batch_size, min((chunk + 1) * opts.pair_batch_size, opts.regression_pairs))
            out = self.pipe(prompt=[prompts[i % len(prompts)] for i in rows], lyrics=[lyrics[i % len(lyrics)] for i in rows],
                            audio_duration=self.clip_seconds, latents=noise[rows.start:rows.stop].to(device),
                            num_inference_steps=opts.regression_steps, shift=opts.regression_shift,
                            guidance_scale=opts.guidance_scale, output_type="latent").audios
            return out.float().cpu()

        with plain_cfg():
            targets = shard_map(endpoints, -(-opts.regression_pairs // opts.pair_batch_size), desc="teacher pairs")
        return noise, torch.cat(targets)

    def check_data(self, dataset: Dataset, num_classes: int) -> None:
        """Items must be encoded captions (what `make_dataset` makes)."""
        item = dataset[0]
        if not isinstance(item, dict) or "encoder_hidden_states" not in item:
            raise ValueError("objective.name=acestep_turbo needs captioned music: use data.name=music or data.name=audio_folder")

    def signature(self) -> dict[str, Any]:
        """A run resumes only with the same method and grids."""
        return {"method": self.options.method, "grids": self.grids}

    def param_groups(self, phase: str) -> list[dict[str, Any]]:
        """Critic phase: the critic at lr x critic_lr_scale; generator phase: the student."""
        if phase == "critic":
            return [{"params": [p for p in self.networks["critic"].parameters() if p.requires_grad],
                     "lr_scale": self.options.critic_lr_scale}]
        return [{"params": [p for p in self.networks["student"].parameters() if p.requires_grad]}]

    # -- losses --------------------------------------------------------------------------

    def conditions(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The transformer's conditioning of a batch: its encoded captions and the text-to-music context latents."""
        from fewstep.models.acestep import text2music_context

        states = batch["encoder_hidden_states"]
        frames = self.teacher.sample_shape[0]
        context = text2music_context(self.pipe.condition_encoder, states.shape[0], frames)
        return {"encoder_hidden_states": states, "context_latents": context.to(states.device, states.dtype)}

    def draw_grid(self, generator: torch.Generator) -> tuple[list[float], int]:
        """(times of one of the student's grids, a step index k in it), one draw per micro-batch.

        A step count uniformly, then one of its shifts uniformly (the 1-step grid is the same at
        every shift, so the mix of step counts does not depend on how many shifts are trained).
        """
        def draw(count: int) -> int:
            return int(torch.randint(count, (1,), generator=generator, device=generator.device))

        counts = list(dict.fromkeys(int(g["steps"]) for g in self.grids))
        steps = counts[draw(len(counts))]
        same = [g for g in self.grids if int(g["steps"]) == steps]
        times = list(same[draw(len(same))]["times"])
        return times, draw(len(times))

    def draw_times(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """t ~ U[t_min, t_max] [count]."""
        u = batch_noise.rand((count,), generator, generator.device).to(device)
        return self.options.t_min + (self.options.t_max - self.options.t_min) * u

    def student_samples(self, conditions: dict[str, Tensor], generator: torch.Generator, grad: str) -> Tensor:
        """x [B, T, C]: the student's x0 at a random step of a random grid, from fresh noise."""
        states = conditions["encoder_hidden_states"]
        shape = (states.shape[0], *self.teacher.sample_shape)
        z = batch_noise.randn(shape, generator, generator.device).to(states.device, states.dtype)
        times, k = self.draw_grid(generator)
        return euler_chain(self.networks["student"], z, conditions, times, k, grad)

    def noised(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t = (1 - t) x + t eps, t [B], eps) on the flow path."""
        t = self.draw_times(x.shape[0], generator, x.device).to(x.dtype)
        eps = batch_noise.randn(x.shape, generator, generator.device).to(x.device, x.dtype)
        return (1 - t[:, None, None]) * x + t[:, None, None] * eps, t, eps

    def real_x0(self, x_t: Tensor, t: Tensor, conditions: dict[str, Tensor]) -> Tensor:
        """The teacher's x0 `x_t - t v` with classifier-free guidance against its null condition (one batched call)."""
        from fewstep.pipelines.music import null_conditions

        w = self.options.guidance_scale
        if w == 1.0:
            v = velocity(self.teacher.network, x_t, t, conditions)
        else:
            null = null_conditions(self.pipe, conditions)
            both = {k: torch.cat([conditions[k], null[k]]) for k in conditions}
            v_cond, v_uncond = velocity(self.teacher.network, torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
            v = v_uncond + w * (v_cond - v_uncond)
        return x_t - t[:, None, None] * v

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        conditions = self.conditions(batch)
        if phase == "critic":
            return self.critic_loss(conditions, generator)
        if self.options.method == "regression":
            return self.regression_loss(batch, conditions, generator)
        return self.generator_loss(conditions, generator)

    def critic_loss(self, conditions: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Flow matching of the critic on the student's samples: ||v(x_t, t) - (eps - x)||^2."""
        with torch.no_grad():
            x = self.student_samples(conditions, generator, grad="none")
        x_t, t, eps = self.noised(x, generator)
        v = velocity(self.networks["critic"], x_t, t, conditions)
        loss = F.mse_loss(v.float(), (eps - x).float())
        return {"loss": loss, "critic_loss": loss.detach()}

    def generator_loss(self, conditions: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """DMD: the shared distribution-matching loss of the student's samples (guided teacher vs critic)."""
        x = self.student_samples(conditions, generator, grad="last")
        x_t, t, _ = self.noised(x.detach(), generator)
        with torch.no_grad():
            x0_real = self.real_x0(x_t, t, conditions)
            x0_fake = x_t - t[:, None, None] * velocity(self.networks["critic"], x_t, t, conditions)
        loss, logs = distribution_matching.distribution_matching_loss(x, x0_real, x0_fake)
        return {"loss": loss, **logs}

    def regression_loss(self, batch: dict[str, Any], conditions: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """||student chain(noise) - teacher endpoint(noise)||^2 on a random grid, through every step."""
        times, _ = self.draw_grid(generator)
        x = euler_chain(self.networks["student"], batch["noise"], conditions, times, grad="all")
        loss = F.mse_loss(x.float(), batch["target"].float())
        return {"loss": loss, "regression": loss.detach()}

    # -- sampling and export -----------------------------------------------------------

    def student_pipeline(self, networks: dict[str, nn.Module]) -> Any:
        """An `AceStepTurboPipeline`: the teacher's components with the student's transformer and the grids."""
        from fewstep.pipelines.turbo import AceStepTurboPipeline

        student = getattr(networks["student"], "module", networks["student"])
        pipe = AceStepTurboPipeline(vae=self.pipe.vae, text_encoder=self.pipe.text_encoder, tokenizer=self.pipe.tokenizer,
                                    transformer=student, condition_encoder=self.pipe.condition_encoder,
                                    scheduler=copy.deepcopy(self.pipe.scheduler), student_grids=self.grids)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample(self, networks: dict[str, nn.Module], class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Audio [B, C, T] for held-out captions number `class_labels` (cycled), on the default grid (no guidance)."""
        prompts, lyrics = held_out_captions(self.held_out, class_labels)
        self.pipe.to(class_labels.device)
        return self.student_pipeline(networks)(prompt=prompts, lyrics=lyrics, audio_duration=self.clip_seconds,
                                               generator=generator).audios

    def write_preview(self, sample_fn: Callable[[Tensor], Tensor], networks: dict[str, nn.Module], stem: Path,
                      num_classes: int, per_class: int) -> Path:
        """Spectrograms of 8 held-out captions (`stem`.png) and their WAVs."""
        return write_music_preview(sample_fn, self.held_out["prompt"], int(self.pipe.sample_rate), stem)

    def export(self, networks: dict[str, nn.Module], folder: Path) -> None:
        """`AceStepTurboPipeline.save_pretrained(folder)` + music.json (the teacher's, with the turbo training recorded)."""
        student = copy.deepcopy(getattr(networks["student"], "module", networks["student"])).eval()
        student.register_to_config(is_turbo=True)  # a plain AceStepPipeline loading this transformer skips guidance too
        self.student_pipeline({"student": student}).save_pretrained(str(folder))
        opts = self.options
        info = {**self.info, "teacher": self.teacher.source,
                "turbo": {"method": opts.method, "grids": self.grids, "guidance_scale": opts.guidance_scale}}
        (Path(folder) / MUSIC_INFO).write_text(json.dumps(info, indent=2))
