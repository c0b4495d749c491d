"""`MultiStudentModel`: K student networks behind a class -> student routing table (MSD, arXiv 2410.23274).

Multi-Student Distillation distils one student per group of classes; at inference each
sample goes to its class's student, so a batch still costs one network call per sample.
This model is that router, shaped like a class-conditional diffusers network
(`model(x, timestep, class_labels=...).sample`), so every pipeline, scheduler and fewstep
sampler that takes a teacher's `unet` takes it too. Students may differ in size and class;
the routing table and each student's class and config are the model's config, the weights one
safetensors file (`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from .shapes import sample_shape


@dataclass
class MultiStudentOutput(BaseOutput):
    """The routed students' outputs [B, ...], in the batch's order."""

    sample: Tensor


def _student_classes() -> dict[str, type]:
    """Network classes a saved multi-student model may name (nothing else is ever imported from a config)."""
    from diffusers import UNet2DModel

    from .mlp import ClassConditionalMLP

    return {"UNet2DModel": UNet2DModel, "ClassConditionalMLP": ClassConditionalMLP}


def describe_student(network: nn.Module) -> dict[str, Any]:
    """{"class": name, "config": the network's public config} for rebuilding `network` without its weights."""
    name = type(network).__name__
    if name not in _student_classes():
        raise ValueError(f"a student must be one of {', '.join(_student_classes())}, not {name}")
    config = {k: v for k, v in dict(network.config).items() if not k.startswith("_")}
    return {"class": name, "config": config}


class MultiStudentModel(ModelMixin, ConfigMixin):
    """Route each sample to the student of its class: `route[c]` is the index of class c's student."""

    @register_to_config
    def __init__(self, student_specs: Sequence[dict[str, Any]] = (), routing: Sequence[int] = (),
                 num_class_embeds: int | None = None) -> None:
        super().__init__()
        classes = _student_classes()
        if not student_specs:
            raise ValueError("a multi-student model needs at least one student")
        for spec in student_specs:
            if spec.get("class") not in classes:
                raise ValueError(f"student class {spec.get('class')!r} is not one of {', '.join(classes)}")
        self.students = nn.ModuleList(classes[spec["class"]].from_config(dict(spec["config"])) for spec in student_specs)
        check_routing(routing, len(student_specs))
        expected = len(routing) + 1
        if num_class_embeds is not None and num_class_embeds != expected:
            raise ValueError(f"num_class_embeds={num_class_embeds} disagrees with a routing table of {len(routing)} classes")
        self.register_buffer("route", torch.tensor(list(routing), dtype=torch.long), persistent=False)
        shapes = {self._student_shape(s) for s in self.students}
        if len(shapes) != 1:
            raise ValueError(f"students make samples of different shapes {sorted(shapes)}; every student must make the teacher's")

    @classmethod
    def from_students(cls, students: Sequence[nn.Module], routing: Sequence[int]) -> "MultiStudentModel":
        """A router holding copies of `students` (weights included) with `routing` (class -> student index)."""
        model = cls(student_specs=[describe_student(s) for s in students], routing=list(routing), num_class_embeds=len(routing) + 1)
        for target, source in zip(model.students, students):
            target.load_state_dict(copy.deepcopy(source.state_dict()))
        return model.to(next(students[0].parameters()).device)

    @staticmethod
    def _student_shape(student: nn.Module) -> tuple[int, ...]:
        return sample_shape(student)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (every student's)."""
        return self._student_shape(self.students[0])

    @property
    def num_classes(self) -> int:
        """Number of (real) classes; the null class `num_classes` has no student."""
        return int(self.route.numel())

    def groups(self) -> list[list[int]]:
        """Classes of each student, in student order."""
        return [[c for c in range(self.num_classes) if int(self.route[c]) == k] for k in range(len(self.students))]

    def forward(self, sample: Tensor, timestep: Tensor | float | int, class_labels: Tensor | None = None,
                return_dict: bool = True) -> MultiStudentOutput | tuple[Tensor]:
        """Each sample [B, ...] through its class's student; one call per student holding samples of the batch."""
        if class_labels is None:
            raise ValueError("a multi-student model routes by class: pass class_labels")
        labels = class_labels.reshape(-1).to(device=sample.device, dtype=torch.long)
        if labels.shape[0] != sample.shape[0]:
            raise ValueError(f"got {labels.shape[0]} class labels for {sample.shape[0]} samples")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes - 1}]; the null class {self.num_classes} has no student "
                "(students are distilled with the teacher's guidance built in: sample with guidance_scale=1)"
            )
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps.reshape(-1)
        owner = self.route.to(sample.device)[labels]
        output: Tensor | None = None
        for index, student in enumerate(self.students):
            rows = torch.nonzero(owner == index).squeeze(1)
            if rows.numel() == 0:
                continue
            routed = student(sample[rows], timesteps[rows], class_labels=labels[rows]).sample
            if output is None:
                output = routed.new_empty((sample.shape[0], *routed.shape[1:]))
            output[rows] = routed
        assert output is not None
        return MultiStudentOutput(sample=output) if return_dict else (output,)


def check_routing(routing: Sequence[int], num_students: int) -> None:
    """Raise ValueError unless every class names a student and every student owns a class."""
    if len(routing) == 0:
        raise ValueError("the routing table is empty; it needs one student index per class")
    bad = [c for c, k in enumerate(routing) if not 0 <= int(k) < num_students]
    if bad:
        raise ValueError(f"classes {bad} are routed to students outside 0..{num_students - 1}")
    idle = sorted(set(range(num_students)) - {int(k) for k in routing})
    if idle:
        raise ValueError(f"students {idle} own no class; drop them or change the routing table")
