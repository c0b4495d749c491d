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

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fewstep.pipelines.class_conditional import null_class, sample_shape
from fewstep.samplers import Denoiser, RectifiedFlowPath, get_schedule, sample
from fewstep.samplers.boss import teacher_trajectories
from fewstep.samplers.spec import SamplerSpec

from .base import Objective


class BossStraighten(Objective):
    """Velocity regression between consecutive teacher states on a BOSS grid (flow teachers only)."""

    def __init__(self, model: nn.Module, spec: str | None, num_noises: int = 1024, fine_steps: int = 100,
                 num_train_timesteps: int = 1000, seed: int = 0) -> None:
        super().__init__({"model": model})
        if not spec:
            raise ValueError("boss_straighten needs objective.spec=FILE (from `fewstep boss schedule ... --out FILE`)")
        self.path = RectifiedFlowPath(num_train_timesteps)
        self.spec_file = str(Path(spec).resolve())
        self.spec = SamplerSpec.load(spec)
        if self.spec.path.get("type") != "rectified_flow":
            raise ValueError("straightening regresses a velocity: it needs a rectified-flow teacher and a spec made for it")
        self.spec.check_compatible(self.path)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the same (EMA) weights as the student
        self.num_noises, self.fine_steps, self.seed = num_noises, fine_steps, seed
        self.ts = self.spec.ts

    def _chosen_indices(self, fine_ts: Tensor) -> list[int]:
        """Positions of the spec's times on the fine grid (the spec must lie on it)."""
        indices = []
        for t in self.ts:
            hits = torch.nonzero(torch.isclose(fine_ts, t, atol=1e-9)).flatten()
            if hits.numel() == 0:
                raise ValueError(f"the spec's time {float(t):.6f} is not on the {self.fine_steps}-step uniform fine grid; "
                                 "search the schedule with the same --fine-steps")
            indices.append(int(hits[0]))
        return indices

    @torch.no_grad()
    def make_dataset(self) -> Dataset:
        """(teacher states at the K + 1 chosen times [N, K+1, ...], class labels [N]) for `num_noises` noises."""
        fine_ts = get_schedule("uniform", self.path, self.fine_steps)
        chosen = self._chosen_indices(fine_ts)
        denoiser = Denoiser(self.teacher, self.path, "flow_prediction")
        generator = torch.Generator().manual_seed(self.seed)
        num_classes = null_class(self.teacher)
        states, labels = [], []
        for start in range(0, self.num_noises, 256):
            count = min(256, self.num_noises - start)
            noise = torch.randn((count, *sample_shape(self.teacher)), generator=generator)
            batch_labels = torch.arange(start, start + count) % num_classes
            xs, _ = teacher_trajectories(denoiser, noise, fine_ts, class_labels=batch_labels)
            states.append(xs[chosen].transpose(0, 1).float())
            labels.append(batch_labels)
        return TensorDataset(torch.cat(states), torch.cat(labels))

    def loss(self, batch: Any, step: int, generator: torch.Generator, phase: str = "main") -> dict[str, Tensor]:
        states, labels = batch  # [B, K+1, ...], [B]
        device = states.device
        k = torch.randint(0, states.shape[1] - 1, (states.shape[0],), generator=generator, device=device)
        rows = torch.arange(states.shape[0], device=device)
        x_k, x_next = states[rows, k], states[rows, k + 1]
        t_k, t_next = self.ts.to(device)[k], self.ts.to(device)[k + 1]
        shape = (-1, *[1] * (x_k.ndim - 1))
        target = (x_next - x_k) / (t_next - t_k).to(x_k.dtype).reshape(shape)
        timestep = self.path.model_time(t_k.cpu()).to(device=device, dtype=torch.float32)
        velocity = self.networks["model"](x_k, timestep, class_labels=labels).sample
        return {"loss": torch.mean((velocity.float() - target.float()) ** 2)}

    @torch.no_grad()
    def sample(self, network: nn.Module, class_labels: Tensor, generator: torch.Generator, num_steps: int,
               guidance_scale: float = 1.0) -> Tensor:
        """Euler on the BOSS grid (the grid the network is being specialised to)."""
        x = torch.randn((class_labels.shape[0], *sample_shape(network)), generator=generator, device=class_labels.device)
        return sample(Denoiser(network, self.path, "flow_prediction"), x, self.ts, "ddim", class_labels=class_labels).x

    def scheduler(self) -> Any:
        """FewStepScheduler with the BOSS spec (copied into the exported pipeline by save_pretrained)."""
        from fewstep.pipelines.scheduler import FewStepScheduler

        return FewStepScheduler(prediction_type="flow_prediction", num_train_timesteps=self.path.num_train_timesteps,
                                spec=self.spec_file)
