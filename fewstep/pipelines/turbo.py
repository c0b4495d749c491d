"""`AceStepTurboPipeline`: a distilled ACE-Step-style student that samples at the fixed times it was trained on.

    import fewstep.pipelines  # registers the class with diffusers
    pipe = AceStepTurboPipeline.from_pretrained("assets/music/turbo")
    audio = pipe(prompt="guitar, 90 bpm, A minor", lyrics="la lo").audios   # 8 steps, shift 3, no guidance
    pipe(prompt=..., num_inference_steps=4, shift=1.0)                     # another trained grid
    pipe.student_grids                                                      # [{"steps": 8, "shift": 3.0, "times": [...]}, ...]

It is diffusers' `AceStepPipeline` (same components, same Euler loop, same prompt template) whose
transformer is flagged `is_turbo` (the pipeline then never runs guidance: one network call per
step) and whose config records the student's time grids. A call without `num_inference_steps`
/ `shift` uses the default grid; a step count or shift the student was not trained for is
refused with the trained ones listed (the student's weights only know its own times).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from diffusers import AceStepPipeline

from .class_conditional import register_with_diffusers

#: ACE-Step's default time shift (its training shift; the default of a turbo pipeline when trained for it).
DEFAULT_SHIFT = 3.0
#: two shifts closer than this are the same shift.
SHIFT_TOLERANCE = 1e-6


def acestep_times(steps: int, shift: float) -> list[float]:
    """ACE-Step's sampling times [steps] (t = 1 noise): linspace(1, 0, steps + 1) shifted, t -> s t / (1 + (s - 1) t), last 0 dropped.

    The formula of `AceStepPipeline._get_timestep_schedule` (in float64), which also gives the
    turbo checkpoints' fixed 8-step tables for shifts 1, 2 and 3.
    """
    if steps < 1:
        raise ValueError(f"a time grid needs at least one step, got {steps}")
    if not (shift > 0 and math.isfinite(shift)):
        raise ValueError(f"the time shift must be a positive number, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return [float(v) for v in t[:-1]]


def check_times(times: Sequence[float], where: str = "times") -> list[float]:
    """`times` as floats, after checking they start at 1.0 (pure noise) and strictly decrease inside (0, 1]."""
    values = [float(t) for t in times]
    if (not values or not all(math.isfinite(t) for t in values) or values[0] != 1.0 or values[-1] <= 0
            or any(b >= a for a, b in zip(values, values[1:]))):
        raise ValueError(f"{where} must start at 1.0 (pure noise) and strictly decrease inside (0, 1], got {list(times)}")
    return values


def student_grids(steps: Sequence[int], shifts: Sequence[float], times: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """The student's grids [{"steps", "shift", "times"}]: ACE-Step's grid for every (steps, shift), or one custom `times` list."""
    if times:
        custom = check_times(times, "objective.times")
        return [{"steps": len(custom), "shift": None, "times": custom}]
    return [{"steps": int(n), "shift": float(s), "times": acestep_times(int(n), float(s))} for n in steps for s in shifts]


def select_grid(grids: Sequence[dict[str, Any]], steps: int | None, shift: float | None) -> dict[str, Any]:
    """The grid for (`steps`, `shift`); None picks the default (the first grid's step count, then its first shift)."""
    steps = int(grids[0]["steps"]) if steps is None else int(steps)
    same_steps = [g for g in grids if int(g["steps"]) == steps]
    if not same_steps:
        counts = sorted({int(g["steps"]) for g in grids}, reverse=True)
        raise ValueError(f"this turbo student runs {' / '.join(map(str, counts))} steps (the grids it was distilled on); "
                         f"got num_inference_steps={steps}. Pass num_inference_steps={counts[0]} (or leave it unset), "
                         "or sample the teacher for other step counts")
    if shift is None:
        return same_steps[0]
    for grid in same_steps:
        if grid["shift"] is not None and abs(float(grid["shift"]) - float(shift)) < SHIFT_TOLERANCE:
            return grid
    trained = [g["shift"] for g in same_steps]
    shown = ", ".join("custom times" if s is None else f"{s:g}" for s in trained)
    raise ValueError(f"this turbo student was distilled at shift {shown} for {steps} steps, not shift={shift:g}; "
                     "pass one of those (or leave shift unset); its weights only know the times of those grids")


class AceStepTurboPipeline(AceStepPipeline):
    """diffusers' `AceStepPipeline` for a guidance-free student: fixed trained time grids, one network call per step."""

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, transformer: Any, condition_encoder: Any,
                 scheduler: Any, audio_tokenizer: Any = None, audio_token_detokenizer: Any = None,
                 student_grids: Sequence[dict[str, Any]] | None = None) -> None:
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                         condition_encoder=condition_encoder, scheduler=scheduler, audio_tokenizer=audio_tokenizer,
                         audio_token_detokenizer=audio_token_detokenizer)
        grids = [dict(g) for g in (student_grids or [{"steps": 8, "shift": DEFAULT_SHIFT,
                                                       "times": acestep_times(8, DEFAULT_SHIFT)}])]
        for grid in grids:
            grid["times"] = check_times(grid["times"], "a student grid's times")
            if len(grid["times"]) != int(grid["steps"]):
                raise ValueError(f"a student grid of {grid['steps']} steps lists {len(grid['times'])} times")
        self.register_to_config(student_grids=grids)
        self.is_turbo = True  # guidance is distilled into the weights, whatever the transformer's config says

    @property
    def student_grids(self) -> list[dict[str, Any]]:
        """Every (steps, shift, times) the student was distilled on; the first is the default."""
        return [dict(g) for g in self.config.student_grids]

    @property
    def default_inference_steps(self) -> int:
        """The default grid's step count (what `fewstep sample` uses without --steps)."""
        return int(self.student_grids[0]["steps"])

    def student_times(self, num_inference_steps: int | None = None, shift: float | None = None) -> list[float]:
        """The times (t = 1 noise) a call with these arguments runs; refuses grids the student was not trained on."""
        return list(select_grid(self.student_grids, num_inference_steps, shift)["times"])

    @torch.no_grad()
    def __call__(self, prompt: Any = None, lyrics: Any = "", num_inference_steps: int | None = None,
                 shift: float | None = None, guidance_scale: float = 1.0, timesteps: Sequence[float] | None = None,
                 **kwargs: Any) -> Any:
        """`AceStepPipeline.__call__` on the trained grid for (`num_inference_steps`, `shift`) (defaults: the first grid)."""
        if guidance_scale > 1.0:
            raise ValueError("this turbo student has the teacher's guidance distilled into it and runs without "
                             "guidance; call it with guidance_scale=1 (the default)")
        if timesteps is not None:
            raise ValueError("a turbo student runs only its trained grids; choose one with num_inference_steps / shift "
                             f"(trained: {self.describe_grids()})")
        grid = select_grid(self.student_grids, num_inference_steps, shift)
        return super().__call__(prompt=prompt, lyrics=lyrics, num_inference_steps=int(grid["steps"]),
                                guidance_scale=1.0, shift=DEFAULT_SHIFT if grid["shift"] is None else float(grid["shift"]),
                                timesteps=list(grid["times"]), **kwargs)

    def describe_grids(self) -> str:
        """'8 steps at shift 3, 2, 1; 4 steps at ...' for messages."""
        parts: dict[int, list[str]] = {}
        for g in self.student_grids:
            parts.setdefault(int(g["steps"]), []).append("custom" if g["shift"] is None else f"{float(g['shift']):g}")
        return "; ".join(f"{n} steps at shift {', '.join(s)}" for n, s in parts.items())


register_with_diffusers(AceStepTurboPipeline)
