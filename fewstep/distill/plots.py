"""Sample pictures for training runs: image grids and 2-D scatter plots, written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def _image_grid(images: Tensor, per_row: int) -> "Image.Image":  # noqa: F821
    """[N, C, H, W] in [-1, 1] -> one PIL image with `per_row` images per row."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=per_row, padding=2, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _scatter(points: Tensor, labels: Tensor, path: Path) -> None:
    """Scatter plot of [N, 2] points coloured by label (matplotlib's object API, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=labels.numpy(), cmap="tab10", s=2)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, format="png")


def save_samples_png(samples: Tensor, labels: Tensor, path: str | Path, per_row: int) -> Path:
    """Write images [N, C, H, W] as a grid, or 2-D points [N, 2] as a scatter plot, via temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if samples.ndim == 4:
        _image_grid(samples, per_row).save(tmp, format="PNG")
    elif samples.ndim == 2 and samples.shape[1] == 2:
        _scatter(samples, labels, tmp)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}; expected [N, C, H, W] images or [N, 2] points")
    tmp.replace(path)
    return path
