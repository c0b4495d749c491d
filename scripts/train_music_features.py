"""Train the shipped `music` feature net and write its reference statistics.

    python scripts/train_music_features.py               # writes assets/music_features, assets/music_stats
    python scripts/train_music_features.py --stats-only  # recompute assets/music_stats only

Trains on `MusicDataset("train")` (2,048 synthetic clips), reports the held-out accuracy of each
head on `MusicDataset("test")` (256 clips) and the training time, then writes the net
(save_pretrained, safetensors, swapped in atomically) and `music_{train,test}.npz` (float64 mu,
sigma of the 64-d features, for `fewstep fid clips/ music:test`). Seeded and single-threaded, so
a rerun reproduces the shipped weights on the same torch build.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fewstep.io import assets_dir, describe_machine, save_pretrained_atomically
from fewstep.metrics.music import (
    FEATURES_DIR,
    HEADS,
    STATS_DIR,
    MusicFeatureExtractor,
    load_music_features,
    train_music_features,
    write_reference_stats,
)


def main() -> None:
    """Parse the options, train (or only recompute statistics) and print what was measured."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="assets folder (default: the repo's assets/)")
    parser.add_argument("--stats-only", action="store_true", help="keep the saved net, rewrite only the statistics")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else assets_dir()
    if args.stats_only:
        net = load_music_features(out / FEATURES_DIR)
        print("wrote", *write_reference_stats(MusicFeatureExtractor(net), out / STATS_DIR), sep="\n  ")
        return
    net, info = train_music_features(epochs=args.epochs, seed=args.seed, device=args.device)
    net = net.cpu()
    save_pretrained_atomically(net, out / FEATURES_DIR)
    written = write_reference_stats(MusicFeatureExtractor(net), out / STATS_DIR)
    print(f"machine: {describe_machine()}")
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,}")
    print(f"training time: {info['seconds']:.1f} s ({args.epochs} epochs, {args.threads} thread(s), {args.device})")
    print("held-out accuracy (256 clips): " + ", ".join(f"{h} {info['test_' + h] * 100:.2f}%" for h in HEADS))
    print("wrote", out / FEATURES_DIR, *written, sep="\n  ")


if __name__ == "__main__":
    main()
