"""BOSS straightening (Nguyen et al., ICLR 2024, arXiv 2312.16414): fine-tune a flow model for its K-step grid.

The teacher (the pretrained EMA weights, frozen) is integrated on a fine uniform grid from
`num_noises` seeded noises; its states at the K + 1 times of the BOSS spec are stored. The
student starts from the *same* weights (the public code starts it from non-EMA weights while
the teacher is EMA — a mismatch, not a choice) and regresses, at each chosen time t_k, the
velocity that jumps exactly to the teacher's next chosen state:
    || v_theta(x_k, t_k) - (x_{k+1} - x_k) / (t_{k+1} - t_k) ||^2.
The exported pipeline carries a FewStepScheduler with the spec (Euler on the BOSS grid).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewstep import batch_noise

from .base import Teacher, check_teacher_kind, register_objective
from .trajectory import TeacherTrajectoryObjective, TrajectoryOptions, load_flow_spec, spec_path


@register_objective("boss_straighten")
class BossStraighten(TeacherTrajectoryObjective):
    """Velocity regression between consecutive teacher states on a BOSS grid (flow teachers only)."""

    def __init__(self, model: nn.Module, options: TrajectoryOptions, teacher: Teacher | None) -> None:
        if not options.spec:
            raise ValueError("boss_straighten needs objective.spec=FILE (from `fewstep boss schedule ... --out FILE`)")
        check_teacher_kind(self.name, teacher, "flow")  # the velocity between teacher states is a flow's
        super().__init__(model, options, teacher)
        self.spec = load_flow_spec(options.spec, self.path)
        self.spec_file = spec_path(options.spec)
        self.ts = self.spec.ts

    def keep_indices(self) -> list[int]:
        """Positions of the spec's times on the fine grid (the spec must lie on it)."""
        indices = []
        for t in self.ts:
            hits = torch.nonzero(torch.isclose(self.fine_ts, t, atol=1e-9)).flatten()
            if hits.numel() == 0:
                raise ValueError(f"the spec's time {float(t):.6f} is not on the {self.fine_steps}-step uniform fine grid; "
                                 "search the schedule with the same --fine-steps")
            indices.append(int(hits[0]))
        return indices

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        states, labels = batch  # [B, K+1, ...], [B]
        device = states.device
        k = batch_noise.randint(0, states.shape[1] - 1, (states.shape[0],), generator, device)
        rows = torch.arange(states.shape[0], device=device)
        x_k, x_next = states[rows, k], states[rows, k + 1]
        ts = self.ts.to(device)
        t_k, t_next = ts[k], ts[k + 1]
        target = (x_next - x_k) / (t_next - t_k).to(x_k.dtype).reshape(-1, *[1] * (x_k.ndim - 1))
        return {"loss": self.velocity_loss(x_k, t_k, target, labels)}
