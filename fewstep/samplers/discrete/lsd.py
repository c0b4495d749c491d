"""LSD / LSD+ for masked diffusion (Fu et al., NeurIPS 2025, arXiv 2509.19962): learn the sampler, not the model.

The student takes M steps on the grid ts; step k unmasks with score coefficient Phi_k (LSD)
and, in LSD+, with learned step sizes kappa_k (ts = ts_from_kappa(kappa)). The teacher is the
same denoiser with N >> M steps on a grid containing the student's (each student step cut into
N / M sub-steps). The per-step loss compares *scores*, integrated over the student's step so
that student and teacher are in the same units (the expected number of jumps per token):

    student   a_k = Phi_k * kappa_k * unmask_rate(t_k) * p0(x^S_k) * masked(x^S_k)        [B, L, V]
    teacher   b_k = sum_{teacher sub-steps j in step k} delta_j * unmask_rate(tau_j) * p0(x^T_j) * masked(x^T_j)
    loss_k    = ||a_k - b_k||^2 / ||b_k||^2      (denominator detached: a relative error per step)

and the loss is the mean of loss_k over the M steps (`weighting="per_step"`, the paper's form).
`weighting="global"` normalises once instead, sum_k ||a_k - b_k||^2 / sum_k ||b_k||^2, so each
step counts in proportion to the jump mass it carries (a tiny step cannot buy a near-zero
relative error at no cost).

i.e. ||Phi_k s - s*||^2 with s the student's score and s* the teacher's score trajectory over
the step; for fixed states the optimum is Phi_k = <s, s*> / ||s||^2 (`closed_form_phi`).
States come from sampling and are detached (categorical sampling has no gradient). LSD+ also
gets gradients through the grid: the student's (t_k, kappa_k) and the teacher's sub-step
weights, which are carried as an exact first-order expansion around the current grid so the
teacher's per-step tensors need not be stored.

Coupling: with `coupling="shared"` student and teacher use the same `TokenNoise` (the same
unmask threshold and Gumbel vector per token), so their states differ only where the
samplers differ; with "independent" each draws its own. Relaxed start: the student begins
from the all-masked state with a Hamming radius of round(relax * L) positions already set to
the teacher's final tokens (the state in that ball closest to the teacher's trajectory);
sampling with the fitted spec always starts all-masked.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..spec import SamplerSpec
from .paths import LogLinearMaskPath, check_contains, kappa_from_ts, teacher_grid, ts_from_kappa, uniform_grid
from .samplers import DiscreteDenoiser, DiscreteStepInfo, TokenNoise, all_masked, check_solver, sample

KIND = "masked_discrete"
COUPLINGS = ("shared", "independent")
WEIGHTINGS = ("per_step", "global")


@dataclass
class LSDConfig:
    """Fitting options; `learn_steps=True` is LSD+."""

    num_steps: int
    seq_len: int
    teacher_steps: int = 256
    solver: str = "euler"
    learn_steps: bool = False
    coupling: Literal["shared", "independent"] = "shared"
    relax: float = 0.05  # Hamming radius of the relaxed start, as a fraction of the length
    iters: int = 100
    batch_size: int = 64
    lr: float = 0.02
    seed: int = 0
    weighting: Literal["per_step", "global"] = "per_step"

    def validate(self) -> "LSDConfig":
        """Raise ValueError naming the bad option and the fix."""
        check_solver(self.solver)
        if self.num_steps < 1:
            raise ValueError(f"num_steps (M) must be >= 1, got {self.num_steps}")
        if self.teacher_steps <= self.num_steps:
            raise ValueError(f"the teacher needs more steps than the student: N={self.teacher_steps} <= M={self.num_steps}; "
                             f"use N >> M (e.g. N={max(256, 16 * self.num_steps)})")
        if self.teacher_steps % self.num_steps:
            raise ValueError(f"N={self.teacher_steps} is not a multiple of M={self.num_steps}, so the teacher grid cannot "
                             f"contain the student's; use N={self.num_steps * (self.teacher_steps // self.num_steps)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if not 0.0 <= self.relax < 1.0:
            raise ValueError(f"relax (Hamming radius / length) must lie in [0, 1), got {self.relax}")
        for key in ("seq_len", "iters", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        return self


class LSDFitError(FloatingPointError):
    """Fitting stopped on a non-finite loss or parameter; `last_good` is the spec before that iteration."""

    def __init__(self, message: str, last_good: SamplerSpec) -> None:
        super().__init__(message)
        self.last_good = last_good


@dataclass
class LSDResult:
    """The fitted spec, the loss per iteration, fitting seconds and model evaluations per iteration."""

    spec: SamplerSpec
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    nfe_per_iter: int = 0


# ----------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------


def masked_probs(info: DiscreteStepInfo, mask_id: int) -> Tensor:
    """p0 at the masked positions of the step's input state, zero elsewhere [B, L, V] (float32)."""
    return info.log_p0.exp().float() * (info.x == mask_id).unsqueeze(-1)


def step_error(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """(||student - teacher||^2, ||teacher||^2 detached) over the batch."""
    return ((student - teacher) ** 2).sum(), (teacher.detach() ** 2).sum()


def step_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """||student - teacher||^2 / ||teacher||^2 over the batch (denominator detached)."""
    error, scale = step_error(student, teacher)
    return error / scale.clamp_min(1e-30)


def combine_steps(errors: list[Tensor], scales: list[Tensor], weighting: str) -> Tensor:
    """Mean of the per-step relative errors ("per_step"), or their sums' ratio ("global")."""
    errors_t, scales_t = torch.stack(errors), torch.stack(scales)
    if weighting == "global":
        return errors_t.sum() / scales_t.sum().clamp_min(1e-30)
    return (errors_t / scales_t.clamp_min(1e-30)).mean()


def closed_form_phi(student_score: Tensor, teacher_score: Tensor) -> Tensor:
    """The minimiser of ||Phi s - s*||^2 for fixed states: <s, s*> / ||s||^2."""
    s, s_star = student_score.double(), teacher_score.double()
    return (s * s_star).sum() / (s * s).sum()


def _sub_step_weight(path: LogLinearMaskPath, t_k: Tensor, kappa_k: Tensor, j: int, r: int) -> Tensor:
    """Teacher sub-step j of r inside student step k: delta_j * unmask_rate(tau_j), tau_j = t_k - j kappa_k / r."""
    return kappa_k / r * path.unmask_rate(t_k - j * kappa_k / r)


class TeacherIntegral:
    """Accumulates b_k (and, for LSD+, its derivatives in t_k and kappa_k) from the teacher's sub-steps."""

    def __init__(self, path: LogLinearMaskPath, ts: Tensor, r: int, mask_id: int, with_grad: bool) -> None:
        self.path, self.ts, self.r, self.mask_id, self.with_grad = path, ts.detach(), r, mask_id, with_grad
        self.value: list[Tensor | None] = [None] * (ts.numel() - 1)
        self.d_t: list[Tensor | None] = [None] * (ts.numel() - 1)
        self.d_kappa: list[Tensor | None] = [None] * (ts.numel() - 1)

    def __call__(self, info: DiscreteStepInfo) -> None:
        k, j = divmod(info.i, self.r)
        probs = masked_probs(info, self.mask_id)
        t_k = self.ts[k].clone().requires_grad_(self.with_grad)
        kappa_k = (self.ts[k] - self.ts[k + 1]).clone().requires_grad_(self.with_grad)
        with torch.enable_grad():
            w = _sub_step_weight(self.path, t_k, kappa_k, j, self.r)
            grads = torch.autograd.grad(w, (t_k, kappa_k)) if self.with_grad else None
        self.value[k] = _add(self.value[k], w.item() * probs)
        if grads is not None:
            self.d_t[k] = _add(self.d_t[k], float(grads[0]) * probs)
            self.d_kappa[k] = _add(self.d_kappa[k], float(grads[1]) * probs)

    def target(self, k: int, t_k: Tensor, kappa_k: Tensor) -> Tensor:
        """b_k: the exact value, with the exact gradient in (t_k, kappa_k) when learning steps."""
        value = self.value[k]
        if not self.with_grad:
            return value
        dt, dk = (t_k - t_k.detach()).float(), (kappa_k - kappa_k.detach()).float()
        return value + self.d_t[k] * dt + self.d_kappa[k] * dk


def _add(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def relaxed_start(teacher_final: Tensor, radius: int, vocab_size: int, generator: torch.Generator) -> Tensor:
    """All masked except `radius` random positions per row, set to the teacher's final tokens [B, L]."""
    x = all_masked(*teacher_final.shape, vocab_size, device=teacher_final.device)
    if radius == 0:
        return x
    order = torch.argsort(torch.rand(teacher_final.shape, generator=generator), dim=1)[:, :radius]
    return x.scatter(1, order, teacher_final.gather(1, order))


def lsd_loss(
    denoiser: DiscreteDenoiser, path: LogLinearMaskPath, phi: Tensor, ts: Tensor, cfg: LSDConfig,
    generator: torch.Generator, teacher_ts: Tensor | None = None,
) -> Tensor:
    """One LSD / LSD+ loss evaluation on a fresh batch: teacher run, student run, mean per-step loss."""
    V, B, L, M = denoiser.vocab_size, cfg.batch_size, cfg.seq_len, cfg.num_steps
    fixed_teacher = teacher_ts is not None
    teacher_ts = teacher_ts if fixed_teacher else teacher_grid(ts.detach(), cfg.teacher_steps)
    r = (teacher_ts.numel() - 1) // M
    noise_t = TokenNoise.draw(B, L, V, generator)
    noise_s = noise_t if cfg.coupling == "shared" else TokenNoise.draw(B, L, V, generator)
    integral = TeacherIntegral(path, ts, r, V, with_grad=cfg.learn_steps)
    with torch.no_grad():
        x_teacher = sample(denoiser, all_masked(B, L, V), teacher_ts, path, cfg.solver, noise=noise_t, callback=integral).x
        student_probs: list[Tensor] = []
        x0 = relaxed_start(x_teacher, round(cfg.relax * L), V, generator)
        sample(denoiser, x0, ts.detach(), path, cfg.solver, phi=phi.detach(), noise=noise_s,
               callback=lambda info: student_probs.append(masked_probs(info, V)))
    errors, scales = [], []
    for k in range(M):
        kappa_k = ts[k] - ts[k + 1]
        a_k = (phi[k] * kappa_k * path.unmask_rate(ts[k])).float() * student_probs[k]
        error, scale = step_error(a_k, integral.target(k, ts[k], kappa_k))
        errors.append(error)
        scales.append(scale)
    return combine_steps(errors, scales, cfg.weighting)


# ----------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------


def make_spec(phi: Tensor, ts: Tensor, path: LogLinearMaskPath, cfg: LSDConfig, model_id: str,
              losses: list[float]) -> SamplerSpec:
    """A `masked_discrete` sampler spec: ts [M + 1] (kappa_k = ts[k] - ts[k+1]), coeffs = Phi [M]."""
    provenance = {
        "method": "lsd+" if cfg.learn_steps else "lsd", "model_id": model_id, "teacher_steps": cfg.teacher_steps,
        "loss": ("per-step ||Phi s - s*||^2 / ||s*||^2" if cfg.weighting == "per_step" else
                 "sum_k ||Phi s - s*||^2 / sum_k ||s*||^2") + " (integrated scores)", "coupling": cfg.coupling,
        "relax": cfg.relax, "iters_done": len(losses), "final_loss": losses[-1] if losses else None,
        "config": asdict(cfg),
    }
    return SamplerSpec(solver=cfg.solver, ts=ts.detach(), coeffs=phi.detach(), path=path.to_config(), kind=KIND,
                       provenance=provenance, extra={"loss_history": torch.tensor(losses, dtype=torch.float64)})


def fit_lsd(
    denoiser: DiscreteDenoiser, cfg: LSDConfig, path: LogLinearMaskPath | None = None,
    teacher_ts: Tensor | None = None, progress: bool = False,
) -> LSDResult:
    """Fit Phi [M] (and, for LSD+, kappa [M]) with Adam; stops with LSDFitError (holding the last good spec) on NaN."""
    cfg.validate()
    path = path or LogLinearMaskPath()
    model_id = getattr(denoiser, "model_id", "unnamed-model")
    if teacher_ts is not None:
        if cfg.learn_steps:
            raise ValueError("an explicit teacher grid cannot follow LSD+'s moving student grid; drop teacher_ts or learn_steps")
        teacher_ts = torch.as_tensor(teacher_ts, dtype=torch.float64)
        check_contains(teacher_ts, uniform_grid(cfg.num_steps))
        if (teacher_ts.numel() - 1) % cfg.num_steps or not torch.equal(teacher_ts, teacher_grid(uniform_grid(cfg.num_steps), teacher_ts.numel() - 1)):
            raise ValueError("the teacher grid must cut every student step into the same number of sub-steps; build it with teacher_grid()")
    generator = torch.Generator().manual_seed(cfg.seed)
    phi = torch.ones(cfg.num_steps, dtype=torch.float64, requires_grad=True)
    logits = torch.zeros(cfg.num_steps, dtype=torch.float64, requires_grad=cfg.learn_steps)
    params = [phi] + ([logits] if cfg.learn_steps else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr)

    def grid() -> Tensor:
        return ts_from_kappa(torch.softmax(logits, 0)) if cfg.learn_steps else uniform_grid(cfg.num_steps)

    losses: list[float] = []
    start = time.perf_counter()
    steps = range(cfg.iters)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"lsd M={cfg.num_steps}", unit="it")
    for it in steps:
        good = make_spec(phi, grid(), path, cfg, model_id, losses)
        loss = lsd_loss(denoiser, path, phi, grid(), cfg, generator, teacher_ts)
        if not math.isfinite(loss.item()):
            raise LSDFitError(f"LSD loss is {loss.item()} at iteration {it}; fitting stopped and the last good spec "
                              f"(iteration {it}) was kept. Lower --lr or check the model for NaN outputs", good)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise LSDFitError(f"LSD parameters became non-finite at iteration {it}; the last good spec was kept. Lower --lr", good)
        losses.append(loss.item())
        if progress:
            steps.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    result = make_spec(phi, grid(), path, cfg, model_id, losses)
    return LSDResult(result, losses, time.perf_counter() - start, cfg.teacher_steps + cfg.num_steps)


# ----------------------------------------------------------------------------------------
# Using a spec
# ----------------------------------------------------------------------------------------


def baseline_spec(num_steps: int, solver: str = "euler", path: LogLinearMaskPath | None = None) -> SamplerSpec:
    """The unlearned sampler as a spec: uniform grid, Phi = 1."""
    path = path or LogLinearMaskPath()
    return SamplerSpec(solver=check_solver(solver), ts=uniform_grid(num_steps), coeffs=torch.ones(num_steps, dtype=torch.float64),
                       path=path.to_config(), kind=KIND, provenance={"method": "baseline"})


def check_spec(spec: SamplerSpec, model_id: str | None = None, num_steps: int | None = None) -> LogLinearMaskPath:
    """Raise ValueError if `spec` is not a masked-diffusion spec for this model / step count; returns its path."""
    if spec.kind != KIND:
        raise ValueError(f"this spec is a {spec.kind!r} sampler, not {KIND!r}; fit one with `fewstep lsd fit`")
    if num_steps is not None and spec.num_steps != num_steps:
        raise ValueError(f"this spec was fitted for M={spec.num_steps} steps, not {num_steps}; "
                         f"sample with {spec.num_steps} steps or fit a spec for {num_steps}")
    fitted_for = spec.provenance.get("model_id")
    if model_id is not None and fitted_for not in (None, model_id):
        raise ValueError(f"this spec was fitted for model {fitted_for!r}, not {model_id!r}; "
                         "refit it with `fewstep lsd fit` for this model")
    return LogLinearMaskPath.from_config(spec.path)


def sample_with_spec(
    denoiser: DiscreteDenoiser, spec: SamplerSpec, batch: int, length: int,
    noise: TokenNoise | None = None, generator: torch.Generator | None = None, num_steps: int | None = None,
) -> Tensor:
    """Samples [batch, length] from the all-masked state with the spec's solver, grid and Phi."""
    path = check_spec(spec, getattr(denoiser, "model_id", None), num_steps)
    x = all_masked(batch, length, denoiser.vocab_size)
    with torch.no_grad():
        return sample(denoiser, x, spec.ts, path, spec.solver, phi=spec.coeffs, noise=noise, generator=generator).x


def grid_summary(spec: SamplerSpec) -> dict[str, list[float]]:
    """Phi and kappa as plain lists (for logs and docs)."""
    return {"phi": [round(float(v), 4) for v in spec.coeffs], "kappa": [round(float(v), 4) for v in kappa_from_ts(spec.ts)]}
