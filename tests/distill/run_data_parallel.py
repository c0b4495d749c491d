"""Train the cases of data_parallel_cases.py on every process of an `accelerate launch` (2 processes in the tests).

    accelerate launch --multi_gpu --num_processes 2 tests/distill/run_data_parallel.py OUT CASE[,CASE...] [CASE=CHECKPOINT ...]

Each CASE trains from scratch in OUT/CASE; each CASE=CHECKPOINT resumes the run that holds
CHECKPOINT (its run folder is two levels up) to the case's last step. The main process writes
each run's per-step losses to RUN/losses.json, and which process made each item of a `shard_map`
to OUT/shard_owners.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_parallel_cases import case_config  # noqa: E402

from fewstep.distill.loop import train  # noqa: E402
from fewstep.distill.processes import process_state, shard_map  # noqa: E402


def run(name: str, run_dir: Path, resume: str | None = None) -> None:
    result = train(case_config(name, run_dir, processes=2), resume=resume)
    if result.pipeline is not None:  # set on the main process only
        (run_dir / "losses.json").write_text(json.dumps(result.losses))


def main(argv: list[str]) -> int:
    from accelerate.state import PartialState

    # several runs share this launch's process group: keep it past each run's `end_training`
    # (gloo hangs when a group is set up again with the same store), and destroy it once at the end
    destroy, PartialState.destroy_process_group = PartialState.destroy_process_group, lambda self, group=None: None
    out, names, resumes = Path(argv[0]), [n for n in argv[1].split(",") if n], argv[2:]
    owners = shard_map(lambda i: process_state().process_index, 5)  # which process made each item of shared work
    if process_state().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shard_owners.json").write_text(json.dumps(owners))
    for name in names:
        run(name, out / name)
    for item in resumes:
        name, _, checkpoint = item.partition("=")
        run(name, Path(checkpoint).parents[1], resume=checkpoint)
    destroy(PartialState())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
