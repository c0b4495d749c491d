"""BOSS step schedules: Bellman-optimal grids for a step budget K (Nguyen et al., ICLR 2024, arXiv 2312.16414).

1. Integrate the teacher on a fine grid of n + 1 times with first-order steps (DDIM = Euler for
   flows) from many noises; keep every state x_i and prediction m_i = x0_hat(x_i, t_i).
2. The cost of jumping i -> j in one step is the mean squared distance (summed over
   coordinates) between that step's result and the teacher's own state x_j.
3. A dynamic programme finds the path 0 -> n with exactly K edges of least total cost.

Costs are built from batch-mean Gram matrices of (x_i, m_i), so any number of noises streams
through in O(n^2) memory. Besides the paper's Euler cost, a DPM-Solver++(2M) cost is exact:
a 2M step i -> j with history h adds c * (m_i - m_h) to the first-order jump (c from the
solver's own weights), so its cost is E[i,j] + 2 c G[h,i,j] + c^2 H[h,i], and the DP runs over
(previous, current) node pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from .denoiser import DenoiserLike
from .paths import NoisePath
from .sampling import sample
from .schedules import validate_grid
from .solvers import get_solver, history_lams

_F64 = torch.float64
#: BOSS step rules (`boss_schedule(step_rule=...)`) and the solver each one optimises the grid for.
STEP_RULES = {"euler": "ddim", "dpmpp_2m": "dpmpp_2m"}


@dataclass
class TrajectoryGrams:
    """Batch-mean Gram matrices of teacher states x_i and predictions m_i on a fine grid ([n+1, n+1] each)."""

    ts: Tensor
    xx: Tensor
    xm: Tensor  # xm[i, j] = E <x_i, m_j>
    mm: Tensor
    count: int = 0

    @classmethod
    def empty(cls, ts: Tensor) -> "TrajectoryGrams":
        size = ts.numel()
        zeros = lambda: torch.zeros(size, size, dtype=_F64)  # noqa: E731
        return cls(ts.to(_F64), zeros(), zeros(), zeros())

    def add(self, xs: Tensor, ms: Tensor) -> None:
        """Accumulate a batch of trajectories xs, ms [n+1, B, ...] (running mean in float64)."""
        x = xs.reshape(xs.shape[0], xs.shape[1], -1).to(_F64).transpose(0, 1)  # [B, n+1, D]
        m = ms.reshape(ms.shape[0], ms.shape[1], -1).to(_F64).transpose(0, 1)
        batch = x.shape[0]
        total = self.count + batch
        for name, value in (("xx", x @ x.transpose(1, 2)), ("xm", x @ m.transpose(1, 2)), ("mm", m @ m.transpose(1, 2))):
            mean = getattr(self, name) * (self.count / total) + value.sum(0) / total
            setattr(self, name, mean)
        self.count = total

    @classmethod
    def merge(cls, parts: list["TrajectoryGrams"]) -> "TrajectoryGrams":
        """The Gram means over all trajectories of `parts` (count-weighted, in the order given)."""
        if not parts:
            raise ValueError("no trajectory Gram matrices to merge")
        merged = cls.empty(parts[0].ts)
        merged.count = sum(part.count for part in parts)
        for name in ("xx", "xm", "mm"):
            setattr(merged, name, sum(getattr(part, name) * (part.count / merged.count) for part in parts))
        return merged


def batch_grams(denoiser: DenoiserLike, noise: Tensor, fine_ts: Tensor, **cond: Any) -> TrajectoryGrams:
    """The Gram means of one batch of teacher trajectories from `noise` [B, ...] on `fine_ts`."""
    grams = TrajectoryGrams.empty(fine_ts)
    grams.add(*teacher_trajectories(denoiser, noise, fine_ts, **cond))
    return grams


def teacher_trajectories(denoiser: DenoiserLike, noise: Tensor, fine_ts: Tensor, **cond: Any) -> tuple[Tensor, Tensor]:
    """States xs and predictions ms [n+1, B, ...] of the teacher's first-order solve on `fine_ts`.

    The last state is the sample itself (x_n); its prediction is taken equal to it.
    """
    xs, ms = [noise], []
    record = lambda info: (xs.append(info.x), ms.append(info.x0_hat))  # noqa: E731
    with torch.no_grad():
        sample(denoiser, noise, fine_ts, get_solver("ddim", lower_order_final=False), callback=record, **cond)
    ms.append(xs[-1])
    return torch.stack(xs), torch.stack(ms)


def _step_coefficients(path: NoisePath, ts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First-order step i -> j: x_j_hat = a[i,j] x_i + b[i,j] m_i; and lam [n+1]."""
    alpha, sigma = path.alpha_sigma(ts.to(_F64))
    lam = path.lam(ts.to(_F64))
    h = lam[None, :] - lam[:, None]  # h[i, j] = lam_j - lam_i
    a = sigma[None, :] / sigma[:, None]
    b = -alpha[None, :] * torch.expm1(-h)
    return a, b, lam


def euler_costs(path: NoisePath, grams: TrajectoryGrams) -> Tensor:
    """c[i, j] = E ||a_ij x_i + b_ij m_i - x_j||^2 for i < j (inf elsewhere): BOSS's local cost."""
    a, b, _ = _step_coefficients(path, grams.ts)
    xx, xm, mm = grams.xx, grams.xm, grams.mm
    d_xx, d_xm, d_mm = xx.diagonal(), xm.diagonal(), mm.diagonal()
    cost = (
        a**2 * d_xx[:, None] + b**2 * d_mm[:, None] + d_xx[None, :]
        + 2 * a * b * d_xm[:, None] - 2 * a * xx - 2 * b * xm.T
    )
    return _upper(cost.clamp(min=0))


def dpmpp_2m_costs(path: NoisePath, grams: TrajectoryGrams) -> tuple[Tensor, Tensor]:
    """(E [n+1, n+1], c2 [h, i, j]): first-order costs and exact 2M costs with history node h < i."""
    a, b, lam = _step_coefficients(path, grams.ts)
    euler = euler_costs(path, grams)
    xm, mm = grams.xm, grams.mm
    n1 = grams.ts.numel()
    # G[h, i, j] = E <e_ij, m_i - m_h> with e_ij = a x_i + b m_i - x_j, from the Gram matrices:
    #   a_ij (xm[i,i] - xm[i,h]) + b_ij (mm[i,i] - mm[i,h]) - (xm[j,i] - xm[j,h])
    d_xm, d_mm = xm.diagonal(), mm.diagonal()
    term = (
        a[None] * (d_xm[None, :, None] - xm.T[:, :, None])
        + b[None] * (d_mm[None, :, None] - mm[:, :, None])
        - (xm.T[None, :, :] - xm.T[:, None, :])
    )
    delta_sq = d_mm[None, :] + d_mm[:, None] - 2 * mm  # H[h, i] = E ||m_i - m_h||^2 (symmetric)
    h_step = lam[None, :] - lam[:, None]  # [i, j]
    lam_hist = history_lams(lam, path)  # the solver's placement of a history point at alpha = 0
    h_prev = lam[None, :] - lam_hist[:, None]  # [h, i]
    # 2M combines b (w0 m_i + w1 m_h) = b m_i + c (m_i - m_h) with c = -b w1 (w0 + w1 = 1)
    weights = get_solver(STEP_RULES["dpmpp_2m"]).multistep_weights(2, h_step[None], h_prev[:, :, None])
    c = -b[None] * weights[1]
    c2 = euler[None] + 2 * c * term + c**2 * delta_sq[:, :, None]
    # steps that the solver takes at first order: into sigma = 0
    first_order = ~torch.isfinite(lam)[None, None, :].expand(n1, n1, n1)
    c2 = torch.where(first_order, euler[None].expand(n1, n1, n1), c2)
    upper = torch.ones(n1, n1, dtype=torch.bool).triu(1)
    valid = upper[:, :, None] & upper[None]  # h < i < j
    return euler, torch.where(valid, c2.clamp(min=0), torch.full_like(c2, float("inf")))


def _upper(cost: Tensor) -> Tensor:
    """Keep i < j, inf elsewhere."""
    mask = torch.ones_like(cost, dtype=torch.bool).triu(1)
    return torch.where(mask, cost, torch.full_like(cost, float("inf")))


def _check_costs(cost: Tensor, num_steps: int) -> int:
    n = cost.shape[-1] - 1
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"the step budget K must be an integer >= 1, got {num_steps!r}")
    if num_steps > n:
        raise ValueError(f"K = {num_steps} steps do not fit a fine grid of {n} intervals; use K <= {n} or a finer grid")
    if bool(torch.isnan(cost).any()):
        raise ValueError("the cost matrix contains NaN (did the teacher produce NaN states?)")
    return n


def bellman_path(cost: Tensor, num_steps: int) -> tuple[list[int], float]:
    """Cheapest path 0 -> n with exactly K edges for costs c[i, j] (i < j): O(K n^2) DP."""
    n = _check_costs(cost, num_steps)
    cost = cost.to(_F64)
    inf = torch.tensor(float("inf"), dtype=_F64)
    to_go = torch.full((n + 1,), float("inf"), dtype=_F64)
    to_go[n] = 0.0  # zero edges left: must already be at n
    choices = []
    for _ in range(num_steps):
        total = cost + to_go[None, :]  # [i, j]
        best, arg = total.min(dim=1)
        to_go = torch.where(torch.isfinite(best), best, inf)
        choices.append(arg)
    path, node = [0], 0
    for arg in reversed(choices):
        node = int(arg[node])
        path.append(node)
    total_cost = float(to_go[0])
    if not torch.isfinite(torch.tensor(total_cost)):
        raise ValueError("no finite-cost path: the costs are infinite along every route")
    return path, total_cost


def bellman_path_2m(euler: Tensor, c2: Tensor, num_steps: int) -> tuple[list[int], float]:
    """Cheapest K-edge path 0 -> n when an edge's cost depends on the previous node (2M history)."""
    n = _check_costs(euler, num_steps)
    best = torch.full((n + 1, n + 1), float("inf"), dtype=_F64)  # best[h, i]: arrived at i from h
    best[0, 1:] = euler[0, 1:]  # the first step has no history: first order
    backs = []
    for _ in range(num_steps - 1):
        total = best[:, :, None] + c2  # [h, i, j]
        new, arg = total.min(dim=0)  # over h -> [i, j]
        backs.append(arg)
        best = new
    h_final = int(best[:, n].argmin())
    total_cost = float(best[h_final, n])
    if not torch.isfinite(torch.tensor(total_cost)):
        raise ValueError("no finite-cost path: the costs are infinite along every route")
    path = [n, h_final]
    for arg in reversed(backs):
        path.append(int(arg[path[-1], path[-2]]))
    return list(reversed(path)), total_cost


@dataclass
class BossResult:
    """The chosen grid, its indices on the fine grid, and the DP objective (sum of local costs)."""

    ts: Tensor
    indices: list[int]
    objective: float
    uniform_objective: float
    step_rule: str


def boss_schedule(
    denoiser: DenoiserLike,
    noise_batches: Iterable[Tensor],
    num_steps: int,
    fine_ts: Tensor,
    step_rule: str = "euler",
    progress: bool = False,
    num_batches: int | None = None,
    **cond: Any,
) -> BossResult:
    """BOSS grid with K = num_steps steps on `fine_ts` (the teacher's fine grid, e.g. 100 uniform steps).

    `noise_batches` yields noise tensors [B, ...] or (noise, conditioning kwargs) pairs.
    """
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {list(STEP_RULES)}, got {step_rule!r}")
    fine_ts = validate_grid(fine_ts)
    if step_rule == "dpmpp_2m" and float(fine_ts[-1]) != 0.0:
        raise ValueError("the 2M cost assumes the last step lands on t = 0 (final='zero'); end the fine grid at 0")
    grams = TrajectoryGrams.empty(fine_ts)
    batches = noise_batches
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(noise_batches, desc="teacher trajectories", unit="batch", total=num_batches)
    for batch in batches:
        noise, batch_cond = batch if isinstance(batch, tuple) else (batch, {})
        xs, ms = teacher_trajectories(denoiser, noise, fine_ts, **cond, **batch_cond)
        grams.add(xs, ms)
    return search_schedule(grams, denoiser.path, num_steps, step_rule)


def search_schedule(grams: TrajectoryGrams, path: NoisePath, num_steps: int, step_rule: str = "euler") -> BossResult:
    """BOSS's dynamic programme over the fine grid of `grams`: the K = num_steps grid of least total local error."""
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {list(STEP_RULES)}, got {step_rule!r}")
    fine_ts = grams.ts
    n = fine_ts.numel() - 1
    if num_steps > n:
        raise ValueError(f"K = {num_steps} steps do not fit a fine grid of {n} intervals; use K <= {n} or a finer grid")
    uniform = [round(k * n / num_steps) for k in range(num_steps + 1)]
    if step_rule == "euler":
        cost = euler_costs(path, grams)
        indices, objective = bellman_path(cost, num_steps)
        uniform_objective = float(sum(cost[i, j] for i, j in zip(uniform, uniform[1:])))
    else:
        euler, c2 = dpmpp_2m_costs(path, grams)
        indices, objective = bellman_path_2m(euler, c2, num_steps)
        uniform_objective = _path_cost_2m(euler, c2, uniform)
    return BossResult(fine_ts[indices], indices, objective, uniform_objective, step_rule)


def _path_cost_2m(euler: Tensor, c2: Tensor, indices: list[int]) -> float:
    """Total 2M cost of a given path (first edge first order)."""
    total = float(euler[indices[0], indices[1]])
    for h, i, j in zip(indices, indices[1:], indices[2:]):
        total += float(c2[h, i, j])
    return total
