"""Sampler specs: a solver, its grid and (learned) coefficients, stored as safetensors + JSON.

A spec is what BOSS (optimised grids), LSD / LSD+ (learned coefficients and steps) and any
hand-made grid produce. It loads into `fewstep.samplers.sample` (`**spec.sample_args()`: ts,
solver, coeffs, eval_ts) and into `FewStepScheduler(spec=...)`. Tensors go in the safetensors body;
everything else is JSON in its metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import write_atomic
from .paths import NoisePath, path_from_config
from .sampling import check_eval_ts
from .schedules import validate_grid
from .solvers import get_solver

SPEC_FORMAT = "fewstep-sampler-spec/1"


@dataclass
class SamplerSpec:
    """A solver + grid `ts` [n + 1] + optional per-step weights `coeffs` [n, k] and model evaluation
    times `eval_ts` [n] (decoupled from the grid), with provenance."""

    solver: str
    ts: Tensor
    path: dict[str, Any]
    coeffs: Tensor | None = None
    kind: str = "continuous"
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    eval_ts: Tensor | None = None

    def __post_init__(self) -> None:
        self.ts = torch.as_tensor(self.ts, dtype=torch.float64).detach().cpu()
        if self.kind == "continuous":
            validate_grid(self.ts)
        if self.coeffs is not None:
            self.coeffs = torch.as_tensor(self.coeffs, dtype=torch.float64).detach().cpu()
            if self.coeffs.shape[0] != self.num_steps:
                raise ValueError(f"coeffs has {self.coeffs.shape[0]} rows for a {self.num_steps}-step grid")
            if not bool(torch.isfinite(self.coeffs).all()):
                raise ValueError("coeffs contain NaN/inf; refusing to build the spec")
        if self.eval_ts is not None:
            self.eval_ts = torch.as_tensor(self.eval_ts, dtype=torch.float64).detach().cpu()
            check_eval_ts(self.eval_ts, self.ts, get_solver(self.solver))

    def sample_args(self) -> dict[str, Any]:
        """`ts`, `solver`, `coeffs`, `eval_ts` as keywords: `sample(denoiser, x, **spec.sample_args())`."""
        return {"ts": self.ts, "solver": self.solver, "coeffs": self.coeffs, "eval_ts": self.eval_ts}

    @property
    def num_steps(self) -> int:
        """Number of steps (grid points minus one)."""
        return int(self.ts.numel()) - 1

    @classmethod
    def from_grid(cls, solver: str, ts: Tensor, path: NoisePath, **kwargs: Any) -> "SamplerSpec":
        """A spec for `ts` on `path` (records the path's configuration for compatibility checks)."""
        return cls(solver=solver, ts=ts, path=path.to_config(), **kwargs)

    def build_path(self) -> NoisePath:
        """The noise path the spec was made for."""
        return path_from_config(self.path)

    def check_compatible(self, path: NoisePath, num_steps: int | None = None) -> None:
        """Raise if the spec was made for another noise path or another step count."""
        mine, theirs = _comparable(self.path), _comparable(path.to_config())
        if mine != theirs:
            raise ValueError(
                f"this sampler spec was made for path {mine}, but the model uses {theirs}; "
                "re-run the schedule search / fitting for this model"
            )
        if num_steps is not None and num_steps != self.num_steps:
            raise ValueError(
                f"this sampler spec was fitted for {self.num_steps} steps, not {num_steps}; "
                f"use num_inference_steps={self.num_steps} or fit a spec for {num_steps} steps"
            )

    def save(self, file: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        from safetensors.torch import save_file

        file = Path(file)
        tensors = {"ts": self.ts.contiguous()}
        if self.coeffs is not None:
            tensors["coeffs"] = self.coeffs.contiguous()
        if self.eval_ts is not None:
            tensors["eval_ts"] = self.eval_ts.contiguous()
        for name, value in self.extra.items():
            tensors[f"extra.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        provenance = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **self.provenance}
        header = {"format": SPEC_FORMAT, "kind": self.kind, "solver": self.solver, "path": self.path, "provenance": provenance}
        write_atomic(file, lambda tmp: save_file(tensors, tmp, metadata={"fewstep_spec": json.dumps(header)}))
        return file

    @classmethod
    def load(cls, file: str | os.PathLike) -> "SamplerSpec":
        """Read a spec written by `save` (safetensors; no pickle)."""
        from safetensors import SafetensorError, safe_open

        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"sampler spec {file} does not exist")
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{file} is not a readable safetensors file ({error})") from error
        if "fewstep_spec" not in metadata:
            raise ValueError(f"{file} is a safetensors file but not a fewstep sampler spec (no 'fewstep_spec' metadata)")
        try:
            header = json.loads(metadata["fewstep_spec"])
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: the spec's JSON metadata is corrupt ({error}); re-create the spec") from error
        if not isinstance(header, dict) or header.get("format") != SPEC_FORMAT:
            found = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise ValueError(f"{file}: unsupported spec format {found!r}; expected {SPEC_FORMAT}")
        missing = [key for key in ("solver", "path") if key not in header] + [key for key in ("ts",) if key not in tensors]
        if missing:
            raise ValueError(f"{file}: the sampler spec lacks {missing}; re-create it (fewstep boss schedule / fit-sampler)")
        extra = {key[len("extra."):]: value for key, value in tensors.items() if key.startswith("extra.")}
        try:
            return cls(
                solver=header["solver"], ts=tensors["ts"], path=header["path"], coeffs=tensors.get("coeffs"),
                kind=header.get("kind", "continuous"), provenance=header.get("provenance", {}), extra=extra,
                eval_ts=tensors.get("eval_ts"),
            )
        except ValueError as error:
            raise ValueError(f"{file}: invalid sampler spec: {error}") from error


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a path config that change the ODE (not bookkeeping such as finite lam ends)."""
    return {k: v for k, v in config.items() if k not in ("t_lo_finite",)}
