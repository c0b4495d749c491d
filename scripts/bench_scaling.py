"""Per-GPU memory of fewstep's trainers under DDP and ZeRO stages 1-3 (ZeRO, arXiv 1910.02054); prints Markdown.

    python scripts/bench_scaling.py memory            # mixed-precision Adam (the paper's accounting)
    python scripts/bench_scaling.py memory --fp32     # fp32 Adam: 4 + 4 + 8 bytes per trained parameter

Pure arithmetic (`fewstep.distill.scaling`): model states only (weights, gradients, Adam states,
EMA copies, frozen teachers); nothing is trained or loaded.
"""

from __future__ import annotations

import argparse

from fewstep.distill.scaling import (
    SD_CLASS_TRAINERS, SHIPPED_TRAINERS, STAGES, NetworkSpec, trainer_memory, training_bytes,
)

PROCESS_COUNTS = (1, 8, 64)
STAGE_NAMES = {0: "DDP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3"}
#: the ZeRO paper's example: Psi = 7.5e9, K = 12, N = 64 -> 120 / 31.4 / 16.6 / 1.9 GB.
PAPER_PARAMS, PAPER_PROCESSES, PAPER_GB = 7.5e9, 64, (120, 31.4, 16.6, 1.9)


def gigabytes(num_bytes: float) -> str:
    """Bytes as GB (1e9 bytes), three significant digits."""
    return f"{num_bytes / 1e9:.3g}"


def describe(spec: NetworkSpec) -> str:
    """'637,169 frozen', '637,169 + EMA' or '637,169' (parameters)."""
    kind = " frozen" if not spec.trainable else (" + EMA" if spec.ema else "")
    return f"{spec.num_params:,}{kind}"


def networks_table(trainers: dict[str, dict[str, NetworkSpec]]) -> str:
    """Markdown: each trainer's networks with their parameter counts."""
    lines = ["| trainer | networks (parameters; frozen or trained, + EMA) |", "|---|---|"]
    for trainer, networks in trainers.items():
        lines.append(f"| {trainer} | " + ", ".join(f"{name} {describe(spec)}" for name, spec in networks.items()) + " |")
    return "\n".join(lines)


def memory_table(trainers: dict[str, dict[str, NetworkSpec]], mixed_precision: bool) -> str:
    """Markdown: per-GPU GB of every trainer for N in PROCESS_COUNTS, one column per ZeRO stage."""
    lines = ["| trainer | N | " + " | ".join(STAGE_NAMES[s] for s in STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for trainer, networks in trainers.items():
        for n in PROCESS_COUNTS:
            cells = [gigabytes(trainer_memory(networks, s, n, mixed_precision)["total"]) for s in STAGES]
            lines.append(f"| {trainer} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_check_table() -> str:
    """Markdown: the ZeRO paper's 7.5e9-parameter example at N = 64, computed and as the paper prints it."""
    computed = [gigabytes(training_bytes(PAPER_PARAMS, s, PAPER_PROCESSES)) for s in STAGES]
    return "\n".join([
        "| check (Psi = 7.5e9, K = 12, N = 64) | " + " | ".join(STAGE_NAMES[s] for s in STAGES) + " |",
        "|---|" + "---|" * len(STAGES),
        "| this accounting | " + " | ".join(computed) + " |",
        "| ZeRO paper (as printed) | " + " | ".join(f"{gb:g}" for gb in PAPER_GB) + " |",
    ])


def memory_report(mixed_precision: bool) -> str:
    """The whole Markdown report of `memory`."""
    precision = ("mixed precision: 16-bit weights and gradients, fp32 Adam states + master weights (2 + 2 + 12 "
                 "bytes per trained parameter), frozen networks in 16 bit (2 bytes)" if mixed_precision else
                 "fp32: weights 4 + gradients 4 + Adam 8 bytes per trained parameter, frozen networks 4 bytes")
    return "\n\n".join([
        f"Per-GPU memory of model states in GB (1e9 bytes); {precision}; EMA copies fp32 (4 bytes). "
        "ZeRO-k splits optimizer states (k >= 1), gradients (k >= 2) and weights (k = 3) across the N processes; "
        "frozen networks and EMA copies are split at ZeRO-3 only. Activations, temporary buffers and "
        "fragmentation come on top.",
        "#### ZeRO paper check\n\n" + paper_check_table(),
        "#### Shipped sizes (assets/)\n\n" + networks_table(SHIPPED_TRAINERS) + "\n\n"
        + memory_table(SHIPPED_TRAINERS, mixed_precision),
        "#### SD-class sizes (SD 1.5 UNet 859,520,964 parameters; DiT approximately 2.0e9)\n\n"
        + networks_table(SD_CLASS_TRAINERS) + "\n\n" + memory_table(SD_CLASS_TRAINERS, mixed_precision),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("memory", help="per-GPU memory tables (Markdown) of every trainer, DDP and ZeRO-1/2/3")
    p.add_argument("--fp32", action="store_true", help="full-precision Adam instead of mixed precision")
    args = parser.parse_args()
    if args.what == "memory":
        print(memory_report(mixed_precision=not args.fp32))


if __name__ == "__main__":
    main()
