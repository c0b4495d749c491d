"""Per-GPU memory of fewstep's trainers under DDP and ZeRO stages 1-3 (ZeRO, arXiv 1910.02054); prints Markdown.

    python scripts/bench_scaling.py memory            # mixed-precision Adam (the paper's accounting)
    python scripts/bench_scaling.py memory --fp32     # fp32 Adam: 4 + 4 + 8 bytes per trained parameter
    python scripts/bench_scaling.py throughput assets/configs/mnist_flow.yaml --batch 64   # 1 vs 2 processes (gloo)
    python scripts/bench_scaling.py equivalence       # every objective: 1 process vs 2 (same global batch), ~2 min
    python scripts/bench_scaling.py inventory assets/configs/mixture_msd.yaml   # accounting vs a live trainer's tensors

Pure arithmetic (`fewstep.distill.scaling`): model states only (weights, gradients, Adam states,
EMA copies, frozen teachers); nothing is trained or loaded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

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


def timed_train(config: str, processes: int, threads: int, steps: int, batch_per_process: int) -> float:
    """Wall-clock seconds of `fewstep train CONFIG` for `steps` steps, on one process or `accelerate launch --multi_gpu`."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"run_dir={tmp}/run", f"max_steps={steps}", f"data.batch_size={batch_per_process}", "log_with=none",
                     "checkpoint_every=0", "sample_every=0"]
        launch = [] if processes == 1 else ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                            str(processes), "--num_machines", "1", "--mixed_precision", "no",
                                            "--dynamo_backend", "no"]
        command = [sys.executable, *launch, "-m", "fewstep", "train", config, *overrides]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return time.perf_counter() - start


def throughput_report(config: str, batch: int, short: int, long: int, cores: int) -> str:
    """Markdown: training steps/s at global batch `batch` on 1 and 2 processes (start-up cancelled: long - short steps)."""
    lines = [f"`{config}`, global batch {batch}, steps/s from the difference of a {long}- and a {short}-step run "
             "(start-up, data loading and export cancel out):", "",
             "| processes x torch threads | batch per process | steps/s | samples/s | vs 1 process, all cores |",
             "|---|---|---|---|---|"]
    base = None
    for processes, threads in ((1, cores), (1, 1), (2, max(1, cores // 2))):
        per_process = batch // processes
        seconds = timed_train(config, processes, threads, long, per_process) - timed_train(config, processes, threads,
                                                                                            short, per_process)
        rate = (long - short) / seconds
        base = rate if base is None else base
        lines.append(f"| {processes} x {threads} | {per_process} | {rate:.2f} | {rate * batch:.0f} | {rate / base:.2f} |")
    return "\n".join(lines)


def equivalence_report() -> str:
    """Largest relative differences between 1-process and 2-process runs of every objective (tests' tiny cases)."""
    import json
    from pathlib import Path

    import torch

    tests = Path(__file__).resolve().parents[1] / "tests" / "distill"
    sys.path.insert(0, str(tests))
    from data_parallel_cases import CASES, case_config, make_boss_spec  # noqa: E402  (the tests' cases)
    from test_data_parallel import final_weights, launch  # noqa: E402

    from fewstep.distill.loop import train

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="fewstep_equivalence_"))
    make_boss_spec(root)
    losses = {name: train(case_config(name, root / "one" / name, processes=1)).losses for name in CASES}
    done = launch(root / "two", list(CASES), [])
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    lines = ["| objective (case) | steps | max relative loss difference | max relative weight difference (raw + EMA) |",
             "|---|---|---|---|"]
    for name in CASES:
        two = json.loads((root / "two" / name / "losses.json").read_text())
        loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(two, losses[name]))
        one_w, two_w = final_weights(root / "one" / name), final_weights(root / "two" / name)
        weight_diff = max(float((two_w[k] - one_w[k]).abs().max() / one_w[k].abs().max().clamp_min(1e-12)) for k in one_w)
        lines.append(f"| {name} | {len(two)} | {loss_diff:.1e} | {weight_diff:.1e} |")
    return "\n".join(lines)


def inventory_report(config_path: str) -> str:
    """The fp32 accounting (DDP, one process) of a config's trainer beside the bytes of its live tensors after one step."""
    from fewstep.distill.config import load_config
    from fewstep.distill.loop import Trainer
    from fewstep.distill.scaling import measured_state_bytes, trainer_specs

    run_dir = tempfile.mkdtemp(prefix="fewstep_inventory_")
    config = load_config(config_path, [f"run_dir={run_dir}", "log_with=none", "max_steps=1", "checkpoint_every=0",
                                       "sample_every=0"])
    trainer = Trainer(config)
    trainer.train_step(0, trainer._batches())  # Adam's states exist after the first step
    accounted = trainer_memory(trainer_specs(trainer), stage=0, num_processes=1, mixed_precision=False)
    measured = measured_state_bytes(trainer)
    lines = [f"{config_path}: fp32 weights, gradients, Adam (4 + 4 + 8 bytes per trained parameter), fp32 EMA and "
             "frozen teacher (4 bytes)", "", "| network | accounting (MB) | live tensors (MB) | ratio |", "|---|---|---|---|"]
    for name, value in accounted.items():
        lines.append(f"| {name} | {value / 1e6:.3f} | {measured[name] / 1e6:.3f} | {measured[name] / value:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("memory", help="per-GPU memory tables (Markdown) of every trainer, DDP and ZeRO-1/2/3")
    p.add_argument("--fp32", action="store_true", help="full-precision Adam instead of mixed precision")
    p = sub.add_parser("throughput", help="training steps/s on 1 vs 2 processes (accelerate launch, gloo on CPU)")
    p.add_argument("config")
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the processes)")
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    sub.add_parser("equivalence", help="every objective trained on 1 vs 2 processes with the same global batch")
    p = sub.add_parser("inventory", help="the fp32 accounting beside a config's live trainer tensors after one step")
    p.add_argument("config")
    args = parser.parse_args()
    if args.what == "memory":
        print(memory_report(mixed_precision=not args.fp32))
    elif args.what == "equivalence":
        print(equivalence_report())
    elif args.what == "inventory":
        print(inventory_report(args.config))
    else:
        print(throughput_report(args.config, args.batch, args.short, args.long, args.cores))


if __name__ == "__main__":
    main()
