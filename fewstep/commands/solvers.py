"""`fewstep solvers`: every solver x schedule against the exact ODE solution of an analytic mixture."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

DEFAULT_SCHEDULES = ["uniform", "logsnr", "karras", "quadratic", "flow_shift"]
DEFAULT_NFES = [3, 5, 8, 10, 15, 20]


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "solvers",
        help="error of each solver x schedule vs the exact ODE solution (analytic Gaussian mixture)",
        description=(
            "Integrate the same noise with every solver and schedule on a 16-D, 8-mode Gaussian "
            "mixture whose denoiser is exact, and print the RMS error of the final sample against "
            "the exact probability-flow ODE endpoint, per NFE budget. VP = DDPM linear betas; "
            "flow = rectified flow. SDE solvers are stochastic: their distance to the ODE endpoint "
            "is shown for completeness, it is not what they aim at."
        ),
    )
    from fewstep.samplers import available_schedules, available_solvers

    parser.add_argument("--paths", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
    parser.add_argument("--solvers", nargs="+", default=available_solvers(), metavar="NAME",
                        help=f"default: all ({', '.join(available_solvers())})")
    parser.add_argument("--schedules", nargs="+", default=DEFAULT_SCHEDULES, metavar="NAME",
                        help=f"default: {' '.join(DEFAULT_SCHEDULES)}; valid: {', '.join(available_schedules()[:-1])}")
    parser.add_argument("--nfe", nargs="+", type=int, default=DEFAULT_NFES, help="NFE budgets (default 3 5 8 10 15 20)")
    parser.add_argument("--samples", type=int, default=256, help="noise samples per run (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write an error-vs-NFE plot")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write all rows as JSON")
    return parser


def _validate(args) -> None:
    from fewstep.samplers import available_schedules, get_solver

    for name in args.solvers:
        get_solver(name)  # raises ValueError listing the valid names
    unknown = [s for s in args.schedules if s not in available_schedules() or s == "explicit"]
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; valid: {available_schedules()[:-1]}")
    if not args.nfe or min(args.nfe) < 1:
        raise ValueError("--nfe budgets must be integers >= 1")
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")


def format_table(rows: list, path_kind: str) -> str:
    """Rows solver/schedule x columns NFE budget; '*' marks the best entry of each column."""
    table: dict[tuple[str, str], dict[int, object]] = defaultdict(dict)
    for row in rows:
        table[(row.solver, row.schedule)][row.nfe_budget] = row
    budgets = sorted({row.nfe_budget for row in rows})
    best = {b: min(r.rmse for r in rows if r.nfe_budget == b) for b in budgets}
    width = max(len(f"{s}/{c}") for s, c in table) + 2
    lines = [f"path={path_kind}  RMS error vs exact ODE endpoint (actual NFE in brackets)",
             "solver/schedule".ljust(width) + "".join(f"NFE<={b}".rjust(15) for b in budgets)]
    for (solver, schedule), cells in table.items():
        text = "".join(
            f"{cells[b].rmse:9.2e}{'*' if cells[b].rmse == best[b] else ' '}({cells[b].nfe:2d})".rjust(15) for b in budgets
        )
        lines.append(f"{solver}/{schedule}".ljust(width) + text)
    return "\n".join(lines)


def plot_errors(rows: list, out: Path) -> None:
    """One panel per path; per solver, the schedule with the lowest error summed over budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r.path for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        by_pair: dict[tuple[str, str], list] = defaultdict(list)
        for r in rows:
            if r.path == kind:
                by_pair[(r.solver, r.schedule)].append(r)
        for solver in dict.fromkeys(s for s, _ in by_pair):
            pairs = {k: v for k, v in by_pair.items() if k[0] == solver}
            (_, schedule), series = min(pairs.items(), key=lambda kv: sum(r.rmse for r in kv[1]))
            series = sorted(series, key=lambda r: r.nfe)
            ax.loglog([r.nfe for r in series], [r.rmse for r in series], marker="o", label=f"{solver} @ {schedule}")
        ax.set_title(f"{kind}: error vs exact ODE endpoint")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from fewstep.io import write_atomic

    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def run(args) -> int:
    _validate(args)
    from fewstep.io import write_atomic
    from fewstep.samplers.evaluation import rows_as_dicts, solver_errors

    all_rows = []
    for kind in args.paths:
        rows = solver_errors(kind, args.solvers, args.schedules, args.nfe, num_samples=args.samples, seed=args.seed)
        print(format_table(rows, kind), end="\n\n", flush=True)
        all_rows.extend(rows)
    if args.json is not None:
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(rows_as_dicts(all_rows), indent=1)))
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot_errors(all_rows, args.plot)
        print(f"wrote {args.plot}")
    return 0
