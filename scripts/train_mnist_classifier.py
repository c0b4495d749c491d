"""Train the shipped MNIST feature classifier and write its reference statistics.

    python scripts/train_mnist_classifier.py            # writes assets/mnist_classifier, assets/mnist_stats
    python scripts/train_mnist_classifier.py --stats-only   # recompute assets/mnist_stats only

Seeded and single-threaded, so a rerun reproduces the shipped weights on the same torch build.
Prints the training time and the held-out accuracy (500 images, 50 per digit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fewstep.io import assets_dir, save_pretrained_atomically
from fewstep.metrics.mnist import (
    CLASSIFIER_DIR,
    STATS_DIR,
    MnistFeatureExtractor,
    load_mnist_classifier,
    train_mnist_classifier,
    write_reference_stats,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="assets folder (default: the repo's assets/)")
    parser.add_argument(
        "--stats-only", action="store_true", help="keep the saved classifier, rewrite only the statistics"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else assets_dir()
    if args.stats_only:
        model = load_mnist_classifier(out / CLASSIFIER_DIR)
        print("wrote", *write_reference_stats(MnistFeatureExtractor(model), out / STATS_DIR), sep="\n  ")
        return
    model, info = train_mnist_classifier(epochs=args.epochs, seed=args.seed, device=args.device)
    model = model.cpu()
    save_pretrained_atomically(model, out / CLASSIFIER_DIR)
    written = write_reference_stats(MnistFeatureExtractor(model), out / STATS_DIR)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")
    setup = f"{args.epochs} epochs, {args.threads} thread(s), {args.device}"
    print(f"training time: {info['seconds']:.1f} s ({setup})")
    print(f"held-out accuracy: {info['test_accuracy'] * 100:.2f}% (500 images)")
    print("wrote", out / CLASSIFIER_DIR, *written, sep="\n  ")


if __name__ == "__main__":
    main()
