"""Feature extraction over an input, streamed into float64 statistics, optionally across processes.

Inputs are images (folders, .npz batches) or audio clips (folders; kind 'audio'); the extractor's
`modality` ('image' unless it says 'audio') must match, and an audio extractor's `sample_rate` and
`clip_samples` set how clips are read (`fewstep.metrics.inputs.read_clip`).

Under `accelerate launch` each process reads its shard of the input (every world-th file, or a
block of rows of an .npz batch), accumulates (n, mean, scatter) in float64, and the partial
statistics are gathered and merged in rank order (Chan et al. pairwise update), so the result
equals a single-process run up to float64 round-off. When the features themselves are needed
(KID, bootstrap, FID-infinity, or n <= D for the low-rank Frechet path) they are gathered too,
padded to equal counts, and put back in the input's order.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fewstep.metrics.inputs import InputReport, Item, iterate_audio_folder, iterate_folder, iterate_npz_images
from fewstep.metrics.stats import StatsAccumulator


class Distributed:
    """Rank, world size and tensor gathers: accelerate's when launched with >1 process, else trivial."""

    def __init__(self, cpu: bool | None = None) -> None:
        """cpu: use the gloo CPU backend (default: when CUDA is absent or $ACCELERATE_USE_CPU is set)."""
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            if cpu is None:
                use_cpu_env = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
                cpu = use_cpu_env or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state else None

    def gather(self, tensor: Tensor) -> Tensor:
        """Concatenate `tensor` (same shape on every rank) from all ranks along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        from accelerate.utils import gather

        return gather(tensor.to(self.state.device)).cpu()

    def gather_rows(self, rows: Tensor) -> list[Tensor]:
        """Each rank's (n_r, ...) tensor, padded to equal counts for the gather and unpadded after."""
        if self.world == 1:
            return [rows]
        counts = self.gather(torch.tensor([rows.shape[0]], dtype=torch.int64))
        padded = rows.new_zeros((int(counts.max()), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = self.gather(padded).reshape(self.world, -1, *rows.shape[1:])
        return [gathered[r, : int(counts[r])] for r in range(self.world)]

    def close(self) -> None:
        """Wait for every rank, then tear the process group down (gloo aborts at exit otherwise)."""
        if self.world == 1:
            return
        import torch.distributed as torch_dist

        self.state.wait_for_everyone()
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def any_failed(self, failed: bool) -> bool:
        """True on every rank if any rank failed (so no rank waits forever in a later gather)."""
        return bool(self.gather(torch.tensor([int(failed)])).any()) if self.world > 1 else failed

    def merge(self, accumulator: StatsAccumulator, feature_dim: int) -> StatsAccumulator:
        """All ranks' accumulators merged in rank order (identical on every rank)."""
        if self.world == 1:
            return accumulator
        if accumulator.mean is None:
            accumulator._allocate(feature_dim)
        ns = self.gather(torch.tensor([accumulator.n], dtype=torch.int64))
        means = self.gather(accumulator.mean[None].cpu())
        scatters = self.gather(accumulator.scatter[None].cpu())
        merged = StatsAccumulator()
        for r in range(self.world):
            merged.merge(int(ns[r]), means[r], scatters[r])
        return merged


@dataclass
class Extraction:
    """Merged statistics, the features in input order (if kept), and what was read."""

    accumulator: StatsAccumulator
    features: Tensor | None
    report: InputReport


def extractor_modality(extractor: nn.Module) -> str:
    """'audio' for extractors of float waveforms (N, 1, T), else 'image' (uint8 (N, C, H, W))."""
    return getattr(extractor, "modality", "image")


def check_modality(path: str, kind: str, modality: str, name: str) -> None:
    """Refuse an audio input (kind 'audio') for an image extractor and an image input for an audio one."""
    if kind == "stats" or (kind == "audio") == (modality == "audio"):
        return
    if kind == "audio":
        raise ValueError(
            f"{str(path)!r} holds audio clips but the feature extractor {name!r} takes images; "
            "use an audio feature extractor (--features music)"
        )
    raise ValueError(
        f"{str(path)!r} holds images but the feature extractor {name!r} takes audio clips; score images "
        "with an image extractor (--features inception, mnist, ...) or give a folder of .wav/.flac/.ogg clips"
    )


def _batches(path: str, kind: str, batch_size: int, num_workers: int, dist: Distributed,
             extractor: nn.Module) -> tuple[int, Iterator]:
    if kind == "audio":
        return iterate_audio_folder(path, batch_size, num_workers, int(extractor.sample_rate),
                                    int(extractor.clip_samples), dist.rank, dist.world)
    if kind == "folder":
        return iterate_folder(path, batch_size, num_workers, dist.rank, dist.world)
    return iterate_npz_images(path, batch_size, dist.rank, dist.world)


def _group_by_shape(items: list[Item]) -> list[list[Item]]:
    """Split a batch into groups of equal (C, H, W) (or (1, T)) so each group stacks into one tensor."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(tuple(item.image.shape), []).append(item)
    return list(groups.values())


@torch.no_grad()
def _run_local(
    extractor: nn.Module, batches: Iterator[list[Item]], total: int, device: torch.device,
    report: InputReport, keep_features: bool, skip_bad: bool, progress: bool,
) -> tuple[StatsAccumulator, list[Tensor], list[Tensor]]:
    accumulator = StatsAccumulator(device=device if device.type != "mps" else "cpu")
    kept_features, kept_indices = [], []
    what, unit = ("audio", "clip") if report.kind == "audio" else ("image", "img")
    with tqdm(total=total, desc=f"features {Path(report.path).name}", unit=unit, disable=not progress) as bar:
        for items in batches:
            bar.update(len(items))
            good = []
            for item in items:
                if item.error is None:
                    good.append(item)
                elif skip_bad:
                    report.skipped.append(f"{item.name} ({item.error})")
                else:
                    raise ValueError(
                        f"cannot read {what} {item.name!r}: {item.error}; fix or remove it, or pass --skip-bad"
                    )
            for group in _group_by_shape(good):
                images = torch.stack([item.image for item in group]).to(device)
                features = extractor(images)
                if not torch.isfinite(features).all():
                    names = [item.name for item, ok in zip(group, torch.isfinite(features).all(1)) if not ok]
                    raise ValueError(f"the feature extractor returned NaN or infinite features for {names[:3]}")
                accumulator.update(features)
                if keep_features:
                    kept_features.append(features.float().cpu())
                    kept_indices.append(torch.tensor([item.index for item in group], dtype=torch.int64))
                report.conversions.update(item.conversion for item in group if item.conversion)
                shape = group[0].image.shape
                report.sizes[f"{shape[-1]} samples" if len(shape) == 2 else f"{shape[2]}x{shape[1]}"] += len(group)
    return accumulator, kept_features, kept_indices


def extract_features(
    path: str,
    kind: str,
    extractor: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    keep_features: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
) -> Extraction:
    """Statistics (and optionally features, N x D float32 in input order) of an image or audio input."""
    check_modality(path, kind, extractor_modality(extractor), getattr(extractor, "name", type(extractor).__name__))
    dist = dist or Distributed()
    device = torch.device(device)
    report = InputReport(path=str(path), kind=kind)
    total, batches = _batches(path, kind, batch_size, num_workers, dist, extractor)
    local_total = len(range(dist.rank, total, dist.world)) if kind in ("folder", "audio") else (
        total * (dist.rank + 1) // dist.world - total * dist.rank // dist.world)
    error: ValueError | None = None
    try:
        accumulator, features, indices = _run_local(
            extractor, batches, local_total, device, report, keep_features, skip_bad, progress and dist.is_main
        )
    except ValueError as caught:
        error = caught
    if dist.any_failed(error is not None):
        raise error or ValueError("another process failed while reading its share of the images (see its error)")
    feature_dim = accumulator.feature_dim or int(getattr(extractor, "feature_dim", 0) or 0)
    feature_dim = int(dist.gather(torch.tensor([feature_dim])).max()) if dist.world > 1 else feature_dim
    accumulator = dist.merge(accumulator, feature_dim)
    report.n = accumulator.n
    _merge_reports(report, dist)
    all_features = None
    if keep_features:
        local = torch.cat(features) if features else torch.zeros(0, feature_dim)
        local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
        rows = torch.cat(dist.gather_rows(local))
        order = torch.cat(dist.gather_rows(local_idx)).argsort()
        all_features = rows[order]
    if report.n < 2:
        raise ValueError(
            f"{str(path)!r} gave {report.n} usable {'clip' if kind == 'audio' else 'image'}(s)"
            + (f" ({len(report.skipped)} skipped as unreadable)" if report.skipped else "")
            + "; a covariance needs at least 2"
        )
    return Extraction(accumulator, all_features, report)


def _merge_reports(report: InputReport, dist: Distributed) -> None:
    """Collect every rank's skipped files, conversions and sizes into `report` (rank order)."""
    if dist.world == 1:
        return
    from accelerate.utils import gather_object

    parts = gather_object([(report.skipped, dict(report.conversions), dict(report.sizes))])
    report.skipped, report.conversions, report.sizes = [], Counter(), Counter()
    for skipped, conversions, sizes in parts:
        report.skipped += skipped
        report.conversions.update(conversions)
        report.sizes.update(sizes)
