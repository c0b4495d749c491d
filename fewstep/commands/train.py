"""`fewstep train CONFIG [key=value ...]`: train with the one accelerate loop.

    fewstep train assets/configs/mixture_flow.yaml
    fewstep train assets/configs/mnist_flow.yaml optim.lr=2e-4 run_dir=runs/mnist --resume latest
    accelerate launch --num_processes 2 -m fewstep train assets/configs/mnist_vp.yaml
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Train a model from a YAML/JSON config (see docs/training.md and assets/configs/).
Overrides are key=value or section.key=value (sections: model, data, objective, optim),
applied in order; an override replaces the value it names (data.options={} clears the
file's options, data.options.n=5000 changes one). Unknown keys and dataset options are
rejected with the valid ones listed. --resume latest skips damaged checkpoints (with a
warning naming the bad file). The run folder (run_dir) receives
config.yaml (resolved), logs/ (tensorboard), samples/, checkpoints/step_XXXXXX and, at the
end, pipeline/ (the EMA model as a ClassConditionalPipeline, loadable with from_pretrained).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `train` to the `fewstep` CLI."""
    parser = subparsers.add_parser(
        "train", help="train a teacher / distillation objective from a config",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a .yaml / .json config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4 max_steps=500")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from run_dir's newest checkpoint ('latest') or a checkpoint folder")
    parser.add_argument("--run-dir", default=None, help="shorthand for run_dir=PATH")
    parser.add_argument("--export-only", action="store_true",
                        help="with --resume: write that checkpoint's EMA model to run_dir/pipeline and stop")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): a module that registers its own objective "
                        "with @register_objective, usable as objective.name")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the config, train, and print where the results are."""
    from fewstep.distill.config import load_config
    from fewstep.distill.loop import NonFiniteLossError, export_checkpoint, train
    from fewstep.distill.objectives import import_objective_modules

    import_objective_modules(getattr(args, "imports", []))
    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    config = load_config(args.config, overrides)
    if getattr(args, "export_only", False):
        if not args.resume:
            raise ValueError("--export-only needs --resume latest|PATH (the checkpoint to export)")
        print(f"pipeline: {export_checkpoint(config, args.resume)}")
        return 0
    try:
        result = train(config, resume=args.resume)
    except NonFiniteLossError as error:
        print(f"fewstep train: error: {error}", file=sys.stderr)
        return 1
    if result.losses:
        print(f"trained steps {result.start_step}..{config.max_steps}; final loss {result.losses[-1]:.5g}")
    if result.pipeline is not None:
        print(f"pipeline: {result.pipeline}")
    return 0
