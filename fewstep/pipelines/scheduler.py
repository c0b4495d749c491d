"""FewStepScheduler: fewstep's solvers and grids behind diffusers' scheduler contract.

    pipe.scheduler = FewStepScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m", schedule="logsnr")

`from_config` inherits the pipeline's training schedule (betas or flow), prediction type and
flow shift from DDPM / DDIM / PNDM / Euler / DPMSolverMultistep / UniPCMultistep / FlowMatchEuler
configs (UniPC's solver_order and solver_type choose the unipc_* solver).
Only one-evaluation-per-step (multistep) solvers are offered here; singlestep solvers and
learned coefficients run in `fewstep.samplers.sample`. Options of the source config that
fewstep cannot honour (noise-prediction DPM-Solver, beta sigmas) are refused with a message,
never dropped.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..samplers.parameterization import check_prediction_type, to_x0
from ..samplers.paths import DiscreteVPPath, NoisePath, RectifiedFlowPath
from ..samplers.schedules import SCHEDULES, apply_time_shift, available_schedules, get_schedule, validate_grid
from ..samplers.solvers import available_solvers, get_solver
from ..samplers.spec import SamplerSpec
from ..samplers.unipc import unipc_name
from ..samplers.update import MultistepState, StepUpdate

_FLOW_CLASS_PREFIXES = ("FlowMatch",)
_DPM_CLASSES = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler")
_DPM_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
_SPEC_FILE = "sampler_spec.safetensors"


@dataclass
class _StepTable:
    """One step, precomputed in `set_timesteps`: where the model output is read, and the update in Python floats."""

    alpha: float  # at the model's evaluation time (reads the model output as x0)
    sigma: float
    update: StepUpdate
    corrector: StepUpdate | None = None  # UniC: applied to prev_sample at the next step(), once its output is known


def scheduler_solvers() -> list[str]:
    """Solvers usable in FewStepScheduler (one model evaluation per step)."""
    return available_solvers(kind="multistep")


class FewStepScheduler(SchedulerMixin, ConfigMixin):
    """DPM-Solver++ family (Lu et al. 2022) on any noise path and grid, as a diffusers scheduler.

    Args:
        solver: one of `scheduler_solvers()` ("ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_3m_o3",
            "sde_dpmpp_1", "sde_dpmpp_2m", "sde_dpmpp_3m", and UniPC: "unipc_bh1", "unipc_bh2"
            (order 2), "unipc_bh1_1", "unipc_bh2_1", "unipc_bh1_3", "unipc_bh2_3" (orders 1, 3)).
            UniPC (Zhao et al. 2023) = UniP-p predictor + UniC-p corrector: after each step the
            state is corrected with the model output of the next `step()` call (no extra model
            call), as UniPCMultistepScheduler does; its `lower_order_final` lowers the last
            steps' orders at any step count.
        solver_type: "midpoint" or "heun": how DPM-Solver++(2M) weights its first difference
            (diffusers' `solver_type`).
        schedule: grid name ("uniform", "logsnr", "karras", "quadratic", "flow_shift", "exponential").
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        rescale_betas_zero_snr: the training noise schedule of a VP (DDPM) model.
        prediction_type: "epsilon", "v_prediction", "sample" or "flow_prediction".
        path: "vp" or "flow"; None infers "flow" from prediction_type "flow_prediction".
        shift, use_dynamic_shifting, base_shift, max_shift, base_image_seq_len,
        max_image_seq_len, time_shift_type: flow time shift (SD3 static / Flux dynamic `mu`).
        final: "zero" (last step to t = 0, returns x0_hat) or "t_min" (stop at the smallest
            trained time; diffusers' final_sigmas_type="sigma_min"). On karras / logsnr grids
            "t_min" spaces n + 1 distinct points; diffusers spaces n and repeats sigma_min, a
            zero-length last step that costs a model call and changes nothing.
        lower_order_final: first/second order for the last steps when the grid has fewer than
            15 steps (diffusers' rule; the DPM-Solver reference code uses fewer than 10).
        euler_at_final: always make the last step first order.
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of x0_hat.
        timestep_spacing, steps_offset: diffusers' spacing of the "uniform" grid on DDPM models.
        lambda_min_clipped: clip the log-SNR of time-spaced grids on DDPM models from below
            (diffusers' option, for cosine schedules): the grid starts at the last timestep
            whose log-SNR is at least this value.
        variance_type: "learned" / "learned_range" models output twice the channels (mean and
            variance, e.g. DeepFloyd IF); the extra channels are dropped as diffusers does.
        rho: Karras grid exponent.
        check_finite: raise on NaN/inf model outputs (one reduction per step).
        spec: a sampler spec file (BOSS grid, LSD coefficients, ...): its solver, grid and
            coefficients replace `solver` / `schedule`; `num_inference_steps` must match it.
            `save_pretrained` copies the file next to scheduler_config.json.
        disable_corrector: unipc_* solvers: step indices after which the UniC corrector is
            skipped (UniPC's option of the same name); refused for other solvers.
    """

    # diffusers' compatibility list: pipelines built with any of these can swap in FewStepScheduler
    # (`scheduler.compatibles`), and `from_config` translates their configs.
    _compatibles: list[str] = [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
        "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
    ]
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        schedule: str = "uniform",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
        prediction_type: str = "epsilon",
        path: Literal["vp", "flow"] | None = None,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        final: Literal["zero", "t_min"] = "zero",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        rho: float = 7.0,
        check_finite: bool = True,
        spec: str | None = None,
        disable_corrector: list[int] | None = None,
    ):
        self.sampler_spec = self._load_spec(spec) if spec else None
        if self.sampler_spec is not None:
            solver = self.sampler_spec.solver
        if solver not in scheduler_solvers():
            known = solver in available_solvers()
            hint = " (it needs several model calls per step: use fewstep.samplers.sample)" if known else ""
            raise ValueError(f"solver {solver!r} is not available in FewStepScheduler{hint}; valid: {scheduler_solvers()}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {sorted(SCHEDULES)} (explicit grids: set_timesteps(sigmas=...))")
        check_prediction_type(prediction_type)
        if final not in ("zero", "t_min"):
            raise ValueError(f"final must be 'zero' or 't_min', got {final!r}")
        self.path = self._build_path()
        if self.sampler_spec is not None:
            self.sampler_spec.check_compatible(self.path)
        if self.path.kind == "flow" and prediction_type in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type {prediction_type!r} contradicts a flow-matching model; flow models predict "
                "velocity: use prediction_type='flow_prediction'"
            )
        if self.path.kind == "vp" and prediction_type == "flow_prediction":
            raise ValueError("prediction_type 'flow_prediction' needs path='flow' (a rectified-flow model)")
        self.solver = get_solver(
            solver,
            lower_order_final=lower_order_final,
            euler_at_final=euler_at_final,
            solver_type=solver_type,
            thresholding=thresholding,
            threshold_quantile=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value,
            **self._corrector_options(solver, disable_corrector),
        )
        self.num_inference_steps: int | None = None
        self.timesteps = torch.zeros(0)
        self.ts = torch.zeros(0, dtype=torch.float64)
        self.sigmas = torch.zeros(0)
        self._table: list[_StepTable] = []
        self._table_start = 0
        self._grid: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        self._state = MultistepState(self.solver.history_size)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _corrector_options(solver: str, disable_corrector: list[int] | None) -> dict[str, Any]:
        """`disable_corrector` (UniPC's option) for the unipc_* solvers; refused for solvers without a corrector."""
        if not disable_corrector:
            return {}
        if not solver.startswith("unipc"):
            raise ValueError(
                f"disable_corrector={list(disable_corrector)} needs a solver with the UniC corrector "
                f"({[name for name in scheduler_solvers() if name.startswith('unipc')]}), not {solver!r}"
            )
        return {"disable_corrector": tuple(int(i) for i in disable_corrector)}

    @staticmethod
    def _load_spec(spec: str) -> SamplerSpec:
        loaded = SamplerSpec.load(spec)
        if loaded.kind != "continuous":
            raise ValueError(f"{spec} is a {loaded.kind!r} spec; FewStepScheduler takes continuous-time specs")
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' save_pretrained; a sampler spec is copied next to scheduler_config.json."""
        spec = self.config.spec
        if spec:
            target = Path(save_directory) / _SPEC_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(spec).resolve() != target.resolve():
                shutil.copyfile(spec, target)
            self.register_to_config(spec=_SPEC_FILE)
        try:
            super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if spec:
                self.register_to_config(spec=spec)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: str | None = None, return_unused_kwargs=False, **kwargs):
        """diffusers' from_pretrained; a relative `spec` resolves inside the scheduler folder."""
        folder = Path(pretrained_model_name_or_path or ".") / (subfolder or "")
        config_file = folder / cls.config_name
        if "spec" not in kwargs and config_file.is_file():
            stored = json.loads(config_file.read_text()).get("spec")
            if stored and not Path(stored).is_absolute():
                kwargs["spec"] = str(folder / stored)
        return super().from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=return_unused_kwargs, **kwargs
        )

    def _build_path(self) -> NoisePath:
        cfg = self.config
        kind = cfg.path or ("flow" if cfg.prediction_type == "flow_prediction" else "vp")
        if kind == "flow":
            return RectifiedFlowPath(cfg.num_train_timesteps)
        if kind != "vp":
            raise ValueError(f"path must be 'vp' or 'flow', got {kind!r}")
        return DiscreteVPPath.from_betas(
            cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end,
            cfg.trained_betas, cfg.rescale_betas_zero_snr,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Build from any diffusers scheduler config, inheriting its training schedule and prediction type.

        Only what the source config states is inherited: keys it filled with its class's
        defaults (diffusers' `_use_default_values`) take FewStepScheduler's defaults instead,
        as every diffusers scheduler does. Keys of other schedulers are kept as hidden config
        entries (diffusers' convention), so a round trip back to the source class keeps them.
        """
        if config is None:
            raise ValueError("from_config needs a config, e.g. pipe.scheduler.config")
        config = dict(config)
        valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"unknown FewStepScheduler argument(s) {unknown}; valid: {sorted(valid)}")
        stated = _stated_entries(config)
        translated = _translate_foreign_config(config, stated, kwargs)
        _reject_contradicting_prediction_type(stated, translated, kwargs)
        merged = {**stated, **translated}
        # diffusers lists a live scheduler's own defaulted keys; they are not ours to keep
        merged.pop("_use_default_values", None)
        return super().from_config(merged, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------ diffusers contract

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise (1 for VP and flow paths)."""
        return 1.0

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at this index (img2img pipelines call this before the loop)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity: VP and flow models take x_t unscaled."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[float] | torch.Tensor | None = None,
        sigmas: list[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the grid: from `schedule` and `num_inference_steps`, or from explicit `timesteps` / `sigmas`.

        `timesteps` are in model units (integer DDPM steps, or t * num_train_timesteps for flows);
        `sigmas` are diffusers sigmas (sigma/alpha for VP, t for flows, shifted like
        FlowMatchEulerDiscreteScheduler does). A final t = 0 (or t_min) point is appended.
        """
        if sum(v is not None for v in (num_inference_steps, timesteps, sigmas)) == 0:
            raise ValueError("set_timesteps needs num_inference_steps, timesteps or sigmas")
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass either timesteps or sigmas, not both")
        if self.path.kind == "flow" and self.config.use_dynamic_shifting and mu is None and timesteps is None:
            raise ValueError("this flow scheduler uses dynamic shifting: pass mu=... (the pipeline computes it from the image size)")
        coeffs = eval_ts = None
        if self.sampler_spec is not None:
            ts, coeffs = self._grid_from_spec(num_inference_steps, timesteps, sigmas)
            eval_ts = self.sampler_spec.eval_ts
        elif timesteps is not None:
            ts = self._grid_from_timesteps(timesteps)
        elif sigmas is not None:
            ts = self._grid_from_sigmas(sigmas, mu)
        else:
            ts = self._grid_from_schedule(num_inference_steps, mu)
        self._install_grid(validate_grid(ts), device, coeffs, eval_ts)

    def _grid_from_spec(self, num_inference_steps, timesteps, sigmas) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The spec's grid; a step count implied by the pipeline must match the spec's."""
        requested = num_inference_steps
        for given in (timesteps, sigmas):
            if given is not None:
                requested = len(given)
        self.sampler_spec.check_compatible(self.path, requested)
        return self.sampler_spec.ts, self.sampler_spec.coeffs

    def _final_point(self) -> float:
        return 0.0 if self.config.final == "zero" else self.path.t_min

    def _grid_from_schedule(self, num_inference_steps: int | None, mu: float | None) -> torch.Tensor:
        cfg = self.config
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        kwargs: dict[str, Any] = {"final": cfg.final, "rho": cfg.rho}
        if self.path.kind == "flow":
            kwargs.update(shift=cfg.shift, mu=mu if cfg.use_dynamic_shifting else None, shift_type=cfg.time_shift_type)
        else:
            kwargs.update(timestep_spacing=cfg.timestep_spacing, steps_offset=cfg.steps_offset)
            if SCHEDULES[cfg.schedule].space == "time":  # diffusers clips only its time-spaced grids
                kwargs.update(t_max=self._t_max_clipped())
        return get_schedule(cfg.schedule, self.path, num_inference_steps, **kwargs)

    def _t_max_clipped(self) -> float:
        """Largest training time whose log-SNR is >= lambda_min_clipped (1.0 when unclipped)."""
        clip = float(self.config.lambda_min_clipped)
        if clip == -float("inf") or not isinstance(self.path, DiscreteVPPath):
            return 1.0
        n = self.path.num_train_timesteps
        lams = self.path.lam(torch.arange(1, n + 1, dtype=torch.float64) / n)
        last_timestep = n - int((lams < clip).sum())
        if last_timestep < 1:
            raise ValueError(f"lambda_min_clipped={clip} is above every training timestep's log-SNR; lower it")
        return last_timestep / n

    def _grid_from_timesteps(self, timesteps) -> torch.Tensor:
        values = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
        ts = self.path.t_of_model_time(values)
        return torch.cat([ts, torch.tensor([self._final_point()], dtype=torch.float64)])

    def _grid_from_sigmas(self, sigmas, mu: float | None) -> torch.Tensor:
        values = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        if bool((values < 0).any()) or not bool(torch.isfinite(values).all()):
            raise ValueError("sigmas must be finite and non-negative")
        if self.path.kind == "flow":
            use_mu = mu if self.config.use_dynamic_shifting else None
            ts = apply_time_shift(values, self.config.shift, use_mu, self.config.time_shift_type)
        else:
            ts = self.path.t_of_lam(-torch.log(values))
        if float(ts[-1]) != self._final_point() or ts.numel() == 1:
            ts = torch.cat([ts, torch.tensor([self._final_point()], dtype=torch.float64)])
        return ts

    def _install_grid(self, ts: torch.Tensor, device, coeffs: torch.Tensor | None = None,
                      eval_ts: torch.Tensor | None = None) -> None:
        """Store the grid, the model timesteps and sigmas; precompute every step's coefficients.

        With `eval_ts` (a spec with decoupled evaluation times) the pipeline is handed those
        times as `timesteps` and the model output is read at them; the step still runs on `ts`.
        """
        self.ts = ts
        self.num_inference_steps = ts.numel() - 1
        eval_ts = ts[:-1] if eval_ts is None else eval_ts
        model_times = self.path.model_time(eval_ts)
        if self.path.discrete:
            self.timesteps = model_times.to(device=device, dtype=torch.int64)
        else:
            self.timesteps = model_times.to(device=device, dtype=torch.float32)
        alphas, sigmas = self.path.alpha_sigma(ts)
        self.sigmas = (ts if self.path.kind == "flow" else sigmas / alphas).to(torch.float32)
        self._grid = (ts, coeffs, eval_ts)
        self._build_table(start=0)
        self._state.reset()
        self._step_index = None
        self._begin_index = None

    def _build_table(self, start: int) -> None:
        """Per-step coefficients as Python floats; the multistep history begins at step `start`."""
        ts, coeffs, eval_ts = self._grid
        eval_alphas, eval_sigmas = self.path.alpha_sigma(eval_ts)
        plans = self.solver.plan(ts, self.path, start=start)
        self._table = [
            _StepTable(
                alpha=float(eval_alphas[i]),
                sigma=float(eval_sigmas[i]),
                update=plan.update(None if coeffs is None else coeffs[i]).to_floats(),
                corrector=None if plan.corrector is None else plan.corrector.to_floats(),
            )
            for i, plan in enumerate(plans)
        ]
        self._table_start = start

    def index_for_timestep(self, timestep: Any) -> int:
        """Position of `timestep` in `self.timesteps` (the second match if it repeats, like diffusers)."""
        value = timestep.item() if isinstance(timestep, torch.Tensor) else timestep
        matches = (self.timesteps.cpu().to(torch.float64) == float(value)).nonzero().flatten()
        if matches.numel() == 0:
            raise ValueError(f"timestep {value} is not in this scheduler's timesteps {self.timesteps.tolist()}")
        return int(matches[1 if matches.numel() > 1 else 0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One solver step from `timestep` to the next grid point; returns prev_sample."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            if self._step_index != self._table_start and self._step_index < len(self._table):
                self._build_table(start=self._step_index)  # img2img: no history before the start
        i = self._step_index
        if i >= len(self._table):
            raise RuntimeError(f"step() called {i + 1} times for {len(self._table)} steps; call set_timesteps again")
        if self.config.check_finite and not bool(torch.isfinite(model_output).all()):
            raise FloatingPointError(
                f"model output has NaN/inf at step {i} (timestep {float(self.timesteps[i]):g}); check the model "
                "weights and dtype (fp16 overflow? try float32 or bfloat16)"
            )
        row = self._table[i]
        if self.config.variance_type in ("learned", "learned_range") and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]  # drop the predicted variance channels
        work = torch.promote_types(sample.dtype, torch.float32)
        x = sample.to(work)
        x0 = to_x0(model_output.to(work), x, row.alpha, row.sigma, self.config.prediction_type)
        prev = self._state.step(row.update, x, self.solver.process_x0(x0), generator, corrector=row.corrector)
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # ------------------------------------------------------------------ forward process

    def _alpha_sigma_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.path.t_of_model_time(torch.as_tensor(timesteps).detach().cpu().to(torch.float64).flatten())
        alpha, sigma = self.path.alpha_sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return (v.to(like.device, like.dtype).reshape(shape) for v in (alpha, sigma))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps at model timesteps [B] (training, img2img)."""
        alpha, sigma = self._alpha_sigma_at(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """FlowMatchEuler's forward process: (1 - t) x0 + t eps (SD3 / Flux img2img)."""
        if noise is None:
            raise ValueError("scale_noise needs noise")
        return self.add_noise(sample, noise, torch.as_tensor(timestep).reshape(-1))


# diffusers records a custom component by its class's module; the public import path keeps
# saved model_index.json files readable as ["fewstep", "FewStepScheduler"].
FewStepScheduler.__module__ = "fewstep"


# ---------------------------------------------------------------------- config translation


def _stated_entries(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the keys its class filled with defaults (diffusers' `_use_default_values`)."""
    defaulted = set(config.get("_use_default_values", []) or [])
    return {k: v for k, v in config.items() if k not in defaulted}


def _translate_foreign_config(config: dict[str, Any], stated: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map another scheduler's config onto FewStepScheduler's keys (flow, shift, grid, solver, final).

    `config` (all keys) identifies the scheduler family; values come only from `stated`.
    FewStepScheduler's own keys, when the config states them, are never overridden.
    """
    class_name = str(config.get("_class_name", ""))
    out: dict[str, Any] = {}
    # a live scheduler's .config may lack _class_name: recognise families by their keys too
    flow_match = class_name.startswith(_FLOW_CLASS_PREFIXES) or ("base_shift" in config and "beta_schedule" not in config)
    dpm_multistep = class_name in _DPM_CLASSES or (
        not class_name and "solver_order" in config and config.get("algorithm_type") in _DPM_ALGORITHMS
    )
    if flow_match or bool(stated.get("use_flow_sigmas")) or stated.get("prediction_type") == "flow_prediction":
        out["path"] = "flow"
        out["prediction_type"] = "flow_prediction"
        if "flow_shift" in stated and not flow_match:
            out["shift"] = float(stated["flow_shift"])
    if "schedule" not in stated:
        out.update(_translate_grid(stated, explicit="schedule" in kwargs))
    if stated.get("final_sigmas_type") == "sigma_min" and "final" not in stated:
        out["final"] = "t_min"
    if dpm_multistep and "solver" not in stated and "solver" not in kwargs:
        out["solver"] = _dpm_solver_name(stated)
    unipc = class_name == "UniPCMultistepScheduler" or (not class_name and "predict_x0" in config and "solver_order" in config)
    if unipc and "solver" not in stated and "solver" not in kwargs:
        out["solver"] = _unipc_solver_name(stated)
    if stated.get("solver_type") not in (None, "midpoint", "heun"):
        out["solver_type"] = "midpoint"  # UniPC's "bh2", DEIS's "logrho": other methods' variants
    return out


def _translate_grid(stated: dict[str, Any], explicit: bool) -> dict[str, Any]:
    """diffusers' sigma options -> a fewstep schedule (beta sigmas: refused unless a schedule is given)."""
    if stated.get("use_karras_sigmas"):
        return {"schedule": "karras"}
    if stated.get("use_lu_lambdas") or stated.get("use_exponential_sigmas"):
        return {"schedule": "logsnr"}
    if stated.get("use_beta_sigmas") and not explicit:
        raise ValueError(
            "use_beta_sigmas (Lee et al. 2024 beta-distributed sigmas) is not a FewStepScheduler grid; pass "
            "schedule='karras' or 'logsnr', or set_timesteps(sigmas=...) with the beta sigmas computed by diffusers"
        )
    return {}


def _dpm_solver_name(stated: dict[str, Any]) -> str:
    """DPMSolverMultistepScheduler's algorithm_type + solver_order -> a fewstep solver name."""
    order = int(stated.get("solver_order", 2))
    algorithm = stated.get("algorithm_type", "dpmsolver++")
    names = {
        "dpmsolver++": {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"},
        "sde-dpmsolver++": {1: "sde_dpmpp_1", 2: "sde_dpmpp_2m", 3: "sde_dpmpp_3m"},
    }
    if algorithm not in names:
        raise ValueError(
            f"algorithm_type={algorithm!r} (noise-prediction DPM-Solver) is not implemented by FewStepScheduler, "
            "which runs the data-prediction DPM-Solver++: pass solver='dpmpp_2m' (or another of "
            f"{scheduler_solvers()}) to replace it, or keep DPMSolverMultistepScheduler"
        )
    if order not in names[algorithm]:
        raise ValueError(f"solver_order={order} is not supported; valid: 1, 2, 3")
    return names[algorithm][order]


def _unipc_solver_name(stated: dict[str, Any]) -> str:
    """UniPCMultistepScheduler's solver_order + solver_type (bh1 / bh2) -> a fewstep unipc_* solver name."""
    order = int(stated.get("solver_order", 2))
    variant = stated.get("solver_type", "bh2")
    variant = variant if variant in ("bh1", "bh2") else "bh2"  # diffusers maps other solver_types to bh2
    if not stated.get("predict_x0", True):
        raise ValueError(
            "predict_x0=False (UniPC on the noise prediction) is not implemented by FewStepScheduler, which runs "
            "UniPC on the data prediction (diffusers' default predict_x0=True): drop predict_x0, pass "
            f"solver='{unipc_name(variant, order if order in (1, 2, 3) else 2)}' to use it, or keep UniPCMultistepScheduler"
        )
    if stated.get("solver_p") is not None:
        raise ValueError("solver_p (another scheduler as UniPC's predictor) is not supported; pass solver='unipc_bh2' or similar")
    if order not in (1, 2, 3):
        raise ValueError(f"solver_order={order} is not supported for UniPC; valid: 1, 2, 3")
    return unipc_name(variant, order)


def _reject_contradicting_prediction_type(stated: dict, translated: dict, kwargs: dict) -> None:
    """An explicit prediction_type must agree with the one the pipeline's config states."""
    if "prediction_type" not in kwargs:
        return
    source = translated.get("prediction_type", stated.get("prediction_type"))
    if source is not None and kwargs["prediction_type"] != source:
        raise ValueError(
            f"prediction_type={kwargs['prediction_type']!r} contradicts the pipeline's scheduler config "
            f"({source!r}); the model was trained for {source!r}: omit prediction_type to inherit it"
        )


__all__ = ["FewStepScheduler", "scheduler_solvers", "available_schedules"]
