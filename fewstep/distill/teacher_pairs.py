"""Teacher pairs: (noise, the teacher's ODE states, label) as reusable safetensors shards with provenance.

One generator serves every objective that learns from a teacher's solves (reflow, Liu et al.
2023; BOSS straightening, Nguyen et al. 2024; SlimFlow, Zhu et al. 2024): seeded noise is
integrated by any fewstep solver (or a sampler spec) on a grid, and the states at chosen grid
positions are kept — `[0, n]` (noise, sample) for reflow and SlimFlow, a BOSS grid's positions
on a fine grid for straightening.

A pair folder holds `pairs.json` (the recipe and the teacher's provenance: folder, weight
fingerprint, path, solver, grid, guidance, seed) and `shard-00000.safetensors`, ... with
`states` [n, k, *sample_shape] and `labels` [n]. Shard i's noise comes from its own generator
(seed, i), so shards are independent: several processes split them (shard i on rank
i mod world), an interrupted run resumes by making only the missing shards, and asking for more
pairs later adds shards without changing the existing ones. Each shard is written to a temporary
file and renamed, so a crash never leaves a half-written shard. A folder made by another teacher
or recipe is refused before anything is written.

    recipe = PairRecipe.from_solver("dpmpp_2m", teacher.path, steps=16, seed=0)
    dataset = teacher_pair_dataset(teacher, recipe, num_pairs=4096, folder="runs/pairs/mnist_flow")
    states, label = dataset[0]         # states [2, 1, 32, 32]: (noise, teacher sample)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from fewstep.io import write_atomic
from fewstep.pipelines.loading import LoadedTeacher
from fewstep.samplers import NoisePath, get_schedule, get_solver, sample, validate_grid

from .processes import process_state, shard_map

PAIRS_FORMAT = "fewstep-teacher-pairs/1"
MANIFEST = "pairs.json"
#: noises integrated per teacher batch inside a shard.
SOLVE_BATCH = 256


@dataclass
class PairRecipe:
    """How pairs are made: the solve (solver, grid `ts` [n + 1], optional learned coefficients), kept positions, seed."""

    solver: str
    ts: Tensor
    keep: tuple[int, ...] = ()  # grid positions whose states are stored (default: first and last)
    guidance_scale: float = 1.0
    seed: int = 0
    shard_size: int = 1024
    coeffs: Tensor | None = None  # a learned spec's coefficients
    eval_ts: Tensor | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # {"file", "sha256"} when the solve comes from a sampler spec

    def __post_init__(self) -> None:
        if get_solver(self.solver).stochastic:  # get_solver: a clear error for unknown names
            raise ValueError(f"solver {self.solver!r} is stochastic; teacher pairs are the deterministic ODE coupling, "
                             "so use an ODE solver (e.g. dpmpp_2m, ddim, unipc_bh2)")
        self.ts = validate_grid(torch.as_tensor(self.ts, dtype=torch.float64))
        n = self.ts.numel() - 1
        self.keep = tuple(int(i) for i in self.keep) or (0, n)
        if any(b <= a for a, b in zip(self.keep, self.keep[1:])) or self.keep[0] < 0 or self.keep[-1] > n:
            raise ValueError(f"kept grid positions must increase inside [0, {n}], got {list(self.keep)}")
        if self.shard_size < 1:
            raise ValueError(f"the shard size must be >= 1, got {self.shard_size}")

    @classmethod
    def from_solver(cls, solver: str, path: NoisePath, steps: int, schedule: str = "uniform", **kwargs: Any) -> "PairRecipe":
        """`steps` steps of `solver` on the `schedule` grid of `path`."""
        if steps < 1:
            raise ValueError(f"the teacher needs >= 1 step to make pairs, got {steps}")
        return cls(solver=solver, ts=get_schedule(schedule, path, steps), **kwargs)

    @classmethod
    def from_spec(cls, spec_file: str | Path, path: NoisePath, **kwargs: Any) -> "PairRecipe":
        """The solve of a sampler spec (`fewstep boss schedule` / `fewstep fit-sampler`) made for `path`."""
        from fewstep.samplers.spec import SamplerSpec

        spec = SamplerSpec.load(spec_file)
        spec.check_compatible(path)
        args = spec.sample_args()
        digest = hashlib.sha256(Path(spec_file).read_bytes()).hexdigest()[:16]
        return cls(solver=args["solver"], ts=args["ts"], coeffs=args["coeffs"], eval_ts=args["eval_ts"],
                   spec={"file": str(spec_file), "sha256": digest}, **kwargs)

    def header(self) -> dict[str, Any]:
        """The JSON fields two runs must share to use the same pairs."""
        return {"solver": self.solver, "ts": [round(float(t), 12) for t in self.ts], "keep": list(self.keep),
                "guidance_scale": float(self.guidance_scale), "seed": int(self.seed), "shard_size": int(self.shard_size),
                "spec_sha256": self.spec.get("sha256")}


def solve_states(denoiser: Any, noise: Tensor, recipe: PairRecipe, **cond: Any) -> Tensor:
    """States [B, k, ...] of the recipe's solve from `noise` [B, ...] at its kept grid positions (0 = the noise)."""
    states = [noise]
    record = lambda info: states.append(info.x)  # noqa: E731
    with torch.no_grad():
        sample(denoiser, noise, recipe.ts, recipe.solver, coeffs=recipe.coeffs, eval_ts=recipe.eval_ts, callback=record, **cond)
    return torch.stack([states[i] for i in recipe.keep], dim=1).float()


def shard_generator(seed: int, shard: int) -> torch.Generator:
    """The generator of shard `shard`'s noise: independent of how many shards exist or who makes them."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(shard))


def shard_labels(start: int, count: int, num_classes: int) -> Tensor:
    """Labels [count] of pairs start..start+count-1: classes cycled 0..C-1 (zeros for an unconditional teacher)."""
    index = torch.arange(start, start + count)
    return index % num_classes if num_classes else torch.zeros(count, dtype=torch.long)


def make_shard(teacher: LoadedTeacher, recipe: PairRecipe, shard: int, num_pairs: int) -> dict[str, Tensor]:
    """{"states": [n, k, ...], "labels": [n]} of shard `shard` (pairs shard x shard_size ... up to num_pairs)."""
    start = shard * recipe.shard_size
    count = min(recipe.shard_size, num_pairs - start)
    generator = shard_generator(recipe.seed, shard)  # always a full shard of noise: a short last shard is a prefix of it
    noise = torch.randn((recipe.shard_size, *teacher.sample_shape), generator=generator)[:count]
    labels = shard_labels(start, count, teacher.num_classes)
    denoiser = teacher.guided(recipe.guidance_scale)
    device = next(teacher.network.parameters()).device
    states = []
    for lo in range(0, count, SOLVE_BATCH):
        cond = {"class_labels": labels[lo:lo + SOLVE_BATCH].to(device)} if teacher.num_classes else {}
        states.append(solve_states(denoiser, noise[lo:lo + SOLVE_BATCH].to(device), recipe, **cond).cpu())
    return {"states": torch.cat(states).contiguous(), "labels": labels}


def pairs_manifest(teacher: LoadedTeacher, recipe: PairRecipe, num_pairs: int) -> dict[str, Any]:
    """The folder's manifest: recipe, number of pairs and the teacher's provenance."""
    return {"format": PAIRS_FORMAT, "num_pairs": int(num_pairs), "recipe": recipe.header(),
            "teacher": teacher.source, "teacher_fingerprint": teacher.fingerprint(), "path": teacher.path.to_config(),
            "prediction_type": teacher.prediction_type, "sample_shape": list(teacher.sample_shape),
            "num_classes": teacher.num_classes, "spec_file": recipe.spec.get("file")}


def manifest_mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why pairs described by `found` cannot serve a run that wants `wanted` (None: they can)."""
    if found.get("format") != PAIRS_FORMAT:
        return f"it is not a fewstep pair folder of format {PAIRS_FORMAT} (format {found.get('format')!r})"
    if found.get("teacher_fingerprint") != wanted["teacher_fingerprint"] or found.get("path") != wanted["path"]:
        return (f"its pairs were made by another teacher ({found.get('teacher')}, fingerprint "
                f"{found.get('teacher_fingerprint')}), not {wanted['teacher']} ({wanted['teacher_fingerprint']})")
    for key, value in wanted["recipe"].items():
        if found.get("recipe", {}).get(key) != value:
            return f"its pairs were made with {key}={found.get('recipe', {}).get(key)!r}, this run asks for {value!r}"
    return None


def shard_file(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.safetensors"


def shard_is_complete(file: Path, count: int) -> bool:
    """True if `file` is a readable shard of `count` pairs (a corrupt or short shard is remade)."""
    from safetensors import safe_open

    if not file.is_file():
        return False
    try:
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_slice("labels").get_shape() == [count] and "states" in handle.keys()
    except Exception:  # noqa: BLE001 - any unreadable file is simply made again
        return False


def num_shards(num_pairs: int, shard_size: int) -> int:
    return -(-num_pairs // shard_size)


def shard_count(num_pairs: int, shard_size: int, shard: int) -> int:
    return min(shard_size, num_pairs - shard * shard_size)


def check_pair_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse a folder that holds other files or pairs of another teacher / recipe (nothing is written)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"pairs folder {folder} is a file; pass a folder")
    existing = folder / MANIFEST
    if existing.is_file():
        try:
            found = json.loads(existing.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{existing} is not readable JSON ({error}); delete {folder} or choose another pairs folder") from error
        why = manifest_mismatch(found, manifest)
        if why:
            raise ValueError(f"pairs folder {folder} cannot be reused: {why}. Choose another pairs folder, or delete "
                             f"{folder} to make these pairs again")
    elif folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"pairs folder {folder} is not empty and has no {MANIFEST}; choose an empty or new folder")


def write_pairs(teacher: LoadedTeacher, recipe: PairRecipe, num_pairs: int, folder: str | Path, progress: bool = True) -> Path:
    """Make the missing shards of `folder` (this process's share under accelerate), then wait for the others."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if num_pairs < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {num_pairs}")
    folder = Path(folder)
    manifest = pairs_manifest(teacher, recipe, num_pairs)
    check_pair_folder(folder, manifest)
    state = process_state()
    old = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    if state.is_main_process and num_pairs > int(old.get("num_pairs", 0)):  # a folder asked for fewer keeps them all
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    state.wait_for_everyone()
    total = int(json.loads((folder / MANIFEST).read_text())["num_pairs"])
    mine = [i for i in range(num_shards(total, recipe.shard_size)) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if not shard_is_complete(shard_file(folder, i), shard_count(total, recipe.shard_size, i))]
    for shard in tqdm(todo, desc="teacher pairs", unit="shard", disable=not (progress and state.is_main_process)):
        tensors = make_shard(teacher, recipe, shard, total)
        meta = {"format": PAIRS_FORMAT, "shard": str(shard), "teacher_fingerprint": manifest["teacher_fingerprint"]}
        write_atomic(shard_file(folder, shard), lambda tmp, t=tensors: save_file(t, tmp, metadata=meta))
    state.wait_for_everyone()
    return folder


class TeacherPairDataset(TensorDataset):
    """Items (states [k, ...], label): the teacher's states at the recipe's kept positions; `.manifest` says whence."""

    def __init__(self, states: Tensor, labels: Tensor, manifest: dict[str, Any]) -> None:
        super().__init__(states, labels)
        self.manifest = manifest

    @classmethod
    def load(cls, folder: str | Path, num_pairs: int | None = None) -> "TeacherPairDataset":
        """The first `num_pairs` pairs of `folder` (default: all), or a clear error if shards are missing."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} holds no teacher pairs ({MANIFEST} missing); make them with "
                                    "`fewstep pairs TEACHER --out FOLDER` or a training run that names this folder")
        manifest = json.loads((folder / MANIFEST).read_text())
        total = int(manifest["num_pairs"]) if num_pairs is None else int(num_pairs)
        size = int(manifest["recipe"]["shard_size"])
        states, labels = [], []
        for shard in range(num_shards(total, size)):
            file = shard_file(folder, shard)
            if not shard_is_complete(file, shard_count(int(manifest["num_pairs"]), size, shard)):
                raise ValueError(f"{file} is missing or incomplete; run the pair generation again to finish {folder}")
            tensors = load_file(str(file))
            states.append(tensors["states"])
            labels.append(tensors["labels"])
        return cls(torch.cat(states)[:total], torch.cat(labels)[:total], manifest)


def teacher_pair_dataset(teacher: LoadedTeacher, recipe: PairRecipe, num_pairs: int, folder: str | Path | None = None,
                         progress: bool = True) -> TeacherPairDataset:
    """`num_pairs` teacher pairs: stored in (and reused from) `folder`, or made in memory when it is None."""
    if folder is not None:
        write_pairs(teacher, recipe, num_pairs, folder, progress)
        return TeacherPairDataset.load(folder, num_pairs)
    if num_pairs < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {num_pairs}")
    shards = shard_map(lambda i: make_shard(teacher, recipe, i, num_pairs), num_shards(num_pairs, recipe.shard_size),
                       desc="teacher pairs" if progress else None)
    return TeacherPairDataset(torch.cat([s["states"] for s in shards]), torch.cat([s["labels"] for s in shards]),
                              pairs_manifest(teacher, recipe, num_pairs))
