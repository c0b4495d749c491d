"""`fewstep fid`: FID / FD / KID between image or audio folders, .npz image batches and .npz statistics.

    fewstep fid samples/ ref_stats.npz                 # folder vs precomputed statistics
    fewstep fid stats data/train/ --out train.npz      # write statistics
    fewstep fid a/ b/ --kid --bootstrap 200 --json
    fewstep fid clips/ music:test --features music     # .wav/.flac/.ogg clips vs the shipped music statistics
    accelerate launch -m fewstep fid samples/ ref.npz  # features computed across processes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Score two image sets with the reference FID (Inception-v3 pool features, the TF-ported weights,
TF1 bilinear resize: the same number pytorch-fid and torch-fidelity report), FD on any
registered feature network, KID, FID-infinity and bootstrap intervals.

  fewstep fid A B [options]              A, B: image folder (recursive png/jpg/jpeg/webp/bmp),
                                         ADM-style .npz image batch (arr_0, uint8 NHWC),
                                         .npz statistics (mu, sigma; pytorch-fid/EDM compatible),
                                         audio folder (recursive wav/flac/ogg; --features music), or
                                         a shipped reference NAME:SPLIT (music:test, mnist:all, ...)
  fewstep fid stats A --out FILE.npz     write A's statistics (mu, sigma + extractor, protocol, n);
                                         an existing FILE is refused unless --overwrite

To score a folder literally named "stats", write ./stats.
Audio clips must be mono at the extractor's rate (music: 8 kHz; nothing is resampled); each is
cropped to its first 2.048 s or zero-padded at the end to that length.
Under `accelerate launch [--multi_gpu --num_processes N] -m fewstep fid ...` features are
computed across processes (on CPU-only machines they join over gloo).
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `fid` to the `fewstep` CLI."""
    parser = subparsers.add_parser(
        "fid",
        help="FID / KID / FD between image or audio folders, .npz image batches and .npz statistics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="A B, or: stats A --out FILE.npz")
    parser.add_argument("--out", help="with `stats`: the .npz to write (atomically); checked before any work")
    parser.add_argument("--overwrite", action="store_true",
                        help="with `stats`: replace an existing --out file (refused otherwise)")
    parser.add_argument("--features", default=None,
                        help="feature extractor: a registered name (inception, mnist, music, ...) or "
                             "package.module:callable, the callable being an nn.Module (instance or "
                             "class), a function images -> features, or a factory returning a module "
                             "(default: the statistics file's extractor, else music for audio "
                             "folders and inception for images)")
    parser.add_argument("--weights", default=None,
                        help="weights file for the extractor (inception: else $FEWSTEP_INCEPTION_WEIGHTS, "
                             "else the torch hub cache)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default 50)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes (default 2)")
    parser.add_argument("--kid", action="store_true", help="also KID (needs images on both sides)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000,
                        help="KID subset size, capped at the smaller set (default 1000)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="bootstrap N replicates for a 95%% interval of FID/FD")
    parser.add_argument("--fid-inf", action="store_true",
                        help="also FID-infinity (Chong & Forsyth 2020), extrapolated over subsets of A")
    parser.add_argument("--seed", type=int, default=2020, help="seed of KID subsets and bootstrap")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images (and count them)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _check_args(args: argparse.Namespace) -> bool:
    """Validate the argument combination; returns True in `stats` mode."""
    stats_mode = args.inputs[0] == "stats"
    if stats_mode:
        if len(args.inputs) != 2 or not args.out:
            raise ValueError("usage: fewstep fid stats INPUT --out FILE.npz (one input)")
        if args.kid or args.bootstrap or args.fid_inf:
            raise ValueError("--kid, --bootstrap and --fid-inf score two sets; they do not apply to `stats`")
    elif len(args.inputs) != 2:
        raise ValueError(f"give two inputs to compare (got {len(args.inputs)}), or `stats INPUT --out FILE.npz`")
    elif args.out or args.overwrite:
        raise ValueError("--out and --overwrite are only used with `fewstep fid stats INPUT --out FILE.npz`")
    if args.batch_size < 1 or args.num_workers < 0:
        raise ValueError("--batch-size must be >= 1 and --num-workers >= 0")
    return stats_mode


def _check_output(out: str, overwrite: bool) -> None:
    """Refuse an --out that cannot or should not be written, before any feature is computed.

    The file must end in .npz, must not be a folder, must not exist (unless --overwrite), and the
    nearest existing folder above it must be a writable folder (missing folders below it are
    created when the file is written): `fewstep.io.check_spec_output`.
    """
    from fewstep.io import check_spec_output

    path = Path(out)
    if path.suffix != ".npz" and not path.is_dir():
        raise ValueError(
            f"--out {out!r}: statistics files end in .npz (numpy would append it otherwise); "
            f"use e.g. --out {str(path.with_name(path.name + '.npz'))!r}"
        )
    check_spec_output(path, overwrite)


def _check_stats_provenance(stats_list: list, feature_name: str | None, extractor: Any | None) -> list[str]:
    """Errors for statistics made with another extractor/protocol; notes for unknown provenance."""
    from fewstep.metrics.stats import UNKNOWN

    notes = []
    for path, stats in stats_list:
        if extractor is not None and stats.feature_dim != extractor.feature_dim and extractor.feature_dim:
            raise ValueError(
                f"{path!r} holds {stats.feature_dim}-d statistics but extractor {extractor.name!r} gives "
                f"{extractor.feature_dim}-d features; use the extractor that made the file (--features)"
            )
        if stats.extractor == UNKNOWN:
            notes.append(f"{path}: no extractor/protocol metadata (pytorch-fid style file); assumed to match")
            continue
        name = extractor.name if extractor is not None else feature_name
        if name is not None and stats.extractor != name:
            raise ValueError(
                f"{path!r} was computed with extractor {stats.extractor!r}, not {name!r}; pass "
                f"--features {stats.extractor} or recompute it with `fewstep fid stats`"
            )
        if extractor is not None and stats.protocol not in (UNKNOWN, extractor.protocol):
            raise ValueError(
                f"{path!r} was computed with a different protocol ({stats.protocol!r}) than "
                f"{extractor.name!r} uses now ({extractor.protocol!r}); recompute it"
            )
    return notes


def _default_features(loaded: list, kinds: list[str]) -> str:
    """The extractor named in the statistics files (so `fewstep fid x/ ref.npz` just works), else
    music for audio folders and inception for images."""
    from fewstep.metrics.features import available_feature_extractors

    names = [stats.extractor for _, stats in loaded if stats.extractor != "unknown"]
    if not names:
        return "music" if "audio" in kinds else "inception"
    if names[0] not in available_feature_extractors():
        raise ValueError(
            f"{loaded[0][0]!r} was computed with extractor {names[0]!r}, which is not registered here; "
            "pass --features NAME or --features package.module:callable"
        )
    return names[0]


def _check_modalities(paths: list[str], kinds: list[str], feature_name: str) -> None:
    """Refuse audio for image extractors (and images for audio ones) before any weights are loaded."""
    from fewstep.metrics.extract import check_modality
    from fewstep.metrics.features import feature_extractor_modality

    modality = feature_extractor_modality(feature_name)
    if modality is not None:  # a package.module:callable spec is checked once built
        for path, kind in zip(paths, kinds):
            check_modality(path, kind, modality, feature_name)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_device(dist: Any) -> str:
    import torch

    if dist.device is not None:
        return str(dist.device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _describe_report(report: Any) -> dict:
    return {
        "path": report.path,
        "kind": report.kind,
        "n": report.n,
        "skipped": list(report.skipped),
        "conversions": dict(report.conversions),
        "sizes": dict(report.sizes),
    }


def run(args: argparse.Namespace) -> int:
    """Compute statistics / scores as asked; prints text or JSON on the main process."""
    from fewstep.metrics.extract import Distributed
    from fewstep.metrics.inputs import input_kind, resolve_input
    from fewstep.metrics.stats import load_stats

    stats_mode = _check_args(args)
    if stats_mode:
        _check_output(args.out, args.overwrite)
    paths = [resolve_input(path) for path in (args.inputs[1:] if stats_mode else args.inputs)]
    kinds = [input_kind(path) for path in paths]
    if stats_mode and kinds[0] == "stats":
        raise ValueError(f"{paths[0]!r} already holds statistics; give an image or audio folder or .npz image batch")
    if "audio" in kinds and ({"folder", "images"} & set(kinds)):
        raise ValueError(f"cannot compare audio with images ({', '.join(f'{p}: {k}' for p, k in zip(paths, kinds))}); "
                         "give two audio folders (or one and music statistics) or two image sets")
    loaded = [(path, load_stats(path)) for path, kind in zip(paths, kinds) if kind == "stats"]
    if args.kid and loaded:
        raise ValueError("KID needs the features of both sets; give images, not statistics, on both sides")
    if (args.bootstrap or args.fid_inf) and len(loaded) == 2:
        raise ValueError("--bootstrap and --fid-inf need images on at least one side")
    feature_name = args.features or _default_features(loaded, kinds)
    _check_modalities(paths, kinds, feature_name)
    notes = _check_stats_provenance(loaded, feature_name, None) if all(k == "stats" for k in kinds) else []

    dist = Distributed(cpu=True if (args.device or "").startswith("cpu") else None)
    try:
        return _run(args, dist, stats_mode, paths, kinds, loaded, feature_name, notes)
    finally:
        dist.close()


def _run(args: argparse.Namespace, dist: Any, stats_mode: bool, paths: list[str], kinds: list[str],
         loaded: list, feature_name: str, notes: list[str]) -> int:
    """Extract features on every rank, then score or save statistics on the main one."""
    from fewstep.metrics.extract import extract_features
    from fewstep.metrics.features import get_feature_extractor
    from fewstep.metrics.stats import save_stats

    started = time.perf_counter()
    extractor = None
    if any(kind != "stats" for kind in kinds):
        device = args.device or _default_device(dist)
        if device.startswith("cuda") and not _cuda_available():
            raise ValueError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
        extractor = get_feature_extractor(feature_name, device=device, weights=args.weights)
        notes += _check_stats_provenance(loaded, feature_name, extractor)

    sides = []  # per input: (report dict, Stats, features or None)
    for path, kind in zip(paths, kinds):
        if kind == "stats":
            stats = dict(loaded)[path]
            sides.append(({"path": path, "kind": "stats", "n": stats.n}, stats, None))
            continue
        dim = extractor.feature_dim or 2048
        keep = not stats_mode and (args.kid or args.bootstrap > 0 or args.fid_inf or _count_hint(path, kind) <= dim)
        result = extract_features(
            path, kind, extractor, args.batch_size, device, args.num_workers, keep, args.skip_bad,
            progress=not args.json, dist=dist,
        )
        stats = result.accumulator.compute(extractor.name, extractor.protocol)
        sides.append((_describe_report(result.report), stats, result.features))
    if not dist.is_main:
        return 0

    if stats_mode:
        report, stats, _ = sides[0]
        save_stats(args.out, stats)
        _print({"stats": args.out, "extractor": stats.extractor, "protocol": stats.protocol,
                "feature_dim": stats.feature_dim, "inputs": [report], "notes": notes,
                "processes": dist.world, "seconds": round(time.perf_counter() - started, 2)}, args.json)
        return 0

    result = _score(sides, args, extractor.name if extractor else feature_name)
    result.update({
        "extractor": extractor.name if extractor else feature_name,
        "protocol": extractor.protocol if extractor else sides[0][1].protocol,
        "feature_dim": sides[0][1].feature_dim,
        "inputs": [side[0] for side in sides],
        "notes": notes,
        "processes": dist.world,
        "seconds": round(time.perf_counter() - started, 2),
    })
    _print(result, args.json)
    return 0


def _count_hint(path: str, kind: str) -> int:
    """Number of images in an input (cheap: a directory listing or an .npz header)."""
    from fewstep.metrics.inputs import count_images

    return count_images(path, kind)


def _score(sides: list, args: argparse.Namespace, extractor_name: str) -> dict:
    """FID/FD (+ KID, bootstrap, FID-infinity) from the two sides' statistics and features."""
    from fewstep.metrics.frechet import feature_factor, frechet_distance
    from fewstep.metrics.kid import kernel_inception_distance
    from fewstep.metrics.resample import bootstrap_fd, fid_infinity

    (_, stats1, x1), (_, stats2, x2) = sides
    if stats1.feature_dim != stats2.feature_dim:
        raise ValueError(f"feature dimensions differ: {stats1.feature_dim} vs {stats2.feature_dim}")
    d = stats1.feature_dim
    factor1 = feature_factor(x1) if x1 is not None and x1.shape[0] <= d else None
    factor2 = feature_factor(x2) if x2 is not None and x2.shape[0] <= d else None
    value = frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma, factor1, factor2)
    key = "fid" if extractor_name == "inception" else "fd"
    result: dict[str, Any] = {"metric": key.upper(), key: value}
    if args.kid:
        mean, std = kernel_inception_distance(x1, x2, args.kid_subsets, args.kid_subset_size, args.seed)
        size = min(args.kid_subset_size, x1.shape[0], x2.shape[0])
        result["kid"] = {"mean": mean, "std": std, "subsets": args.kid_subsets, "subset_size": size}
    base, other = (x1, x2 if x2 is not None else stats2) if x1 is not None else (x2, stats1)
    if args.bootstrap:
        boot = bootstrap_fd(base, other, args.bootstrap, seed=args.seed, progress=not args.json)
        result["bootstrap"] = {"low": boot.low, "high": boot.high, "std": boot.std, "bias": boot.bias,
                               "level": boot.level, "replicates": args.bootstrap}
    if args.fid_inf:
        intercept, sizes, values = fid_infinity(base, other, seed=args.seed)
        result[f"{key}_inf"] = {"value": intercept, "sizes": sizes.tolist(), "values": values.tolist()}
    return result


def _print(result: dict, as_json: bool) -> None:
    """One JSON object, or a short human-readable summary."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    lines = []
    if "stats" in result:
        what = "clips" if result["inputs"][0]["kind"] == "audio" else "images"
        lines.append(f"wrote {result['stats']}: {result['inputs'][0]['n']} {what}, "
                     f"{result['feature_dim']}-d {result['extractor']} features")
    else:
        key = result["metric"].lower()
        line = f"{result['metric']}: {result[key]:.6f}"
        lines.append(line)
        if "bootstrap" in result:
            b = result["bootstrap"]
            lines.append(
                f"bootstrap ({b['replicates']} reps): std {b['std']:.6f}, resampling bias {b['bias']:+.6f}; "
                f"{b['level']:.0%} interval for the population value (bias-corrected): [{b['low']:.6f}, {b['high']:.6f}]"
            )
        if "kid" in result:
            k = result["kid"]
            lines.append(f"KID: {k['mean']:.6g} ± {k['std']:.6g}   ({k['subsets']} subsets of {k['subset_size']})")
        if f"{key}_inf" in result:
            lines.append(f"{result['metric']}-infinity: {result[key + '_inf']['value']:.6f}")
    lines.append(f"features: {result['extractor']} ({result['feature_dim']}-d); protocol: {result['protocol']}")
    for side in result["inputs"]:
        text = f"  {side['path']}: {side['kind']}, n={side['n']}"
        if side.get("sizes") and len(side["sizes"]) > 1:
            text += f", mixed sizes {side['sizes']} (each resized by the protocol)"
        for note, count in side.get("conversions", {}).items():
            text += f"; {count} {note}"
        if side.get("skipped"):
            text += f"; skipped {len(side['skipped'])} unreadable: {', '.join(side['skipped'][:5])}"
        lines.append(text)
    lines += [f"  note: {note}" for note in result["notes"]]
    if result["processes"] > 1:
        lines.append(f"  computed across {result['processes']} processes")
    print("\n".join(lines))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m fewstep.commands.fid ...`: this command alone, with `fewstep`'s error handling."""
    parser = argparse.ArgumentParser(prog="fewstep")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fid", *(sys.argv[1:] if argv is None else argv)])
    from fewstep.cli import TRACEBACK_VARIABLE, describe_error, user_error_types

    try:
        return int(run(args) or 0)
    except user_error_types() as error:  # the same one-line convention as `fewstep`
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"fewstep fid: error: {describe_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
