"""Teacher pairs (fewstep.distill.teacher_pairs): exact teacher solves, resumable shards, provenance, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewstep.cli import main
from fewstep.distill import teacher_pairs
from fewstep.distill.teacher_pairs import PairRecipe, TeacherPairDataset, teacher_pair_dataset, write_pairs
from fewstep.io import assets_dir
from fewstep.pipelines.loading import load_teacher
from fewstep.samplers import sample
from fewstep.samplers.spec import SamplerSpec

from distill_helpers import single_thread

TEACHER = assets_dir() / "teachers" / "mixture_flow"
VP_TEACHER = assets_dir() / "teachers" / "mixture_vp"


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(TEACHER)


def recipe(teacher, steps: int = 6, **kwargs) -> PairRecipe:
    return PairRecipe.from_solver("dpmpp_2m", teacher.path, steps, shard_size=kwargs.pop("shard_size", 4), **kwargs)


def file_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of `folder` with its modification time (ns) and bytes."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_pairs_are_the_teachers_ode_solves_from_the_stored_noise(teacher):
    with single_thread():
        data = teacher_pair_dataset(teacher, recipe(teacher, guidance_scale=2.0), 10)
        states, labels = data.tensors
        assert states.shape == (10, 2, 2) and labels.tolist() == [i % 8 for i in range(10)]
        again = sample(teacher.guided(2.0), states[:, 0], recipe(teacher).ts, "dpmpp_2m", class_labels=labels).x
    torch.testing.assert_close(states[:, 1], again, rtol=0, atol=1e-6)
    assert data.manifest["teacher_fingerprint"] == teacher.fingerprint() and data.manifest["recipe"]["guidance_scale"] == 2.0


def test_pairs_from_a_sampler_spec_use_its_grid_and_solver(teacher, tmp_path):
    ts = torch.tensor([1.0, 0.7, 0.35, 0.1, 0.0], dtype=torch.float64)
    spec_file = tmp_path / "k4.safetensors"
    SamplerSpec.from_grid("unipc_bh2", ts, teacher.path).save(spec_file)
    spec_recipe = PairRecipe.from_spec(spec_file, teacher.path, shard_size=8)
    with single_thread():
        states, labels = teacher_pair_dataset(teacher, spec_recipe, 8).tensors
        again = sample(teacher.denoiser, states[:, 0], ts, "unipc_bh2", class_labels=labels).x
    torch.testing.assert_close(states[:, 1], again, rtol=0, atol=1e-6)
    assert spec_recipe.header()["spec_sha256"] is not None


def test_kept_positions_are_the_intermediate_states(teacher):
    kept = PairRecipe.from_solver("ddim", teacher.path, 6, keep=(0, 2, 6))
    with single_thread():
        states, labels = teacher_pair_dataset(teacher, kept, 5).tensors
        mid = sample(teacher.denoiser, states[:, 0], kept.ts[:3], "ddim", class_labels=labels).x
    assert states.shape == (5, 3, 2)
    torch.testing.assert_close(states[:, 1], mid, rtol=0, atol=1e-6)


def test_shards_resume_without_duplicating_or_skipping(teacher, tmp_path, monkeypatch):
    with single_thread():
        whole = teacher_pair_dataset(teacher, recipe(teacher), 10, tmp_path / "whole").tensors
        # an interrupted run: the third shard fails; the first two are complete files, nothing half-written
        real_make_shard = teacher_pairs.make_shard

        def crash_on_third(teacher_, recipe_, shard, num_pairs):
            if shard == 2:
                raise KeyboardInterrupt
            return real_make_shard(teacher_, recipe_, shard, num_pairs)

        monkeypatch.setattr(teacher_pairs, "make_shard", crash_on_third)
        with pytest.raises(KeyboardInterrupt):
            write_pairs(teacher, recipe(teacher), 10, tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["pairs.json", "shard-00000.safetensors",
                                                                         "shard-00001.safetensors"]
        made = []
        monkeypatch.setattr(teacher_pairs, "make_shard", lambda *a: made.append(a[2]) or real_make_shard(*a))
        before = file_state(tmp_path / "run")
        resumed = teacher_pair_dataset(teacher, recipe(teacher), 10, tmp_path / "run").tensors
        assert made == [2]  # only the missing shard
        for name in ("shard-00000.safetensors", "shard-00001.safetensors"):
            assert file_state(tmp_path / "run")[name] == before[name]
        assert all(torch.equal(a, b) for a, b in zip(resumed, whole))
        # a corrupt shard is made again; the rest are kept
        (tmp_path / "run" / "shard-00001.safetensors").write_bytes(b"not a safetensors file")
        made.clear()
        again = teacher_pair_dataset(teacher, recipe(teacher), 10, tmp_path / "run").tensors
        assert made == [1] and all(torch.equal(a, b) for a, b in zip(again, whole))


def test_more_pairs_extend_a_folder_and_fewer_read_a_prefix(teacher, tmp_path):
    with single_thread():
        small = teacher_pair_dataset(teacher, recipe(teacher), 6, tmp_path / "p").tensors
        large = teacher_pair_dataset(teacher, recipe(teacher), 13, tmp_path / "p").tensors
        prefix = teacher_pair_dataset(teacher, recipe(teacher), 5, tmp_path / "p").tensors
    # the short last shard is made again with more pairs: same noise, the same solve (up to batch-size rounding)
    assert torch.equal(large[0][:6, 0], small[0][:, 0]) and len(large[0]) == 13
    torch.testing.assert_close(large[0][:6], small[0], rtol=0, atol=1e-6)
    assert torch.equal(prefix[0], large[0][:5])
    assert json.loads((tmp_path / "p" / "pairs.json").read_text())["num_pairs"] == 13
    assert len(TeacherPairDataset.load(tmp_path / "p")) == 13
    # the noises are distinct: no pair is duplicated across shards
    noise = large[0][:, 0]
    assert torch.unique(noise, dim=0).shape[0] == 13


def test_pairs_of_another_teacher_or_recipe_are_refused_before_anything_is_written(teacher, tmp_path):
    with single_thread():
        teacher_pair_dataset(teacher, recipe(teacher), 4, tmp_path / "p")
    before = file_state(tmp_path / "p")
    other = load_teacher(VP_TEACHER)
    with pytest.raises(ValueError, match="another teacher"):
        teacher_pair_dataset(other, PairRecipe.from_solver("dpmpp_2m", other.path, 6, shard_size=4), 4, tmp_path / "p")
    with pytest.raises(ValueError, match="solver"):
        teacher_pair_dataset(teacher, PairRecipe.from_solver("ddim", teacher.path, 6, shard_size=4), 4, tmp_path / "p")
    with pytest.raises(ValueError, match="ts="):
        teacher_pair_dataset(teacher, recipe(teacher, steps=7), 4, tmp_path / "p")
    assert file_state(tmp_path / "p") == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_pairs(teacher, recipe(teacher), 4, tmp_path / "junk")
    with pytest.raises(FileNotFoundError, match="fewstep pairs"):
        TeacherPairDataset.load(tmp_path / "missing")


def test_bad_recipes_are_refused(teacher):
    with pytest.raises(ValueError, match="solver"):
        PairRecipe.from_solver("no_such_solver", teacher.path, 4)
    with pytest.raises(ValueError, match="kept grid positions"):
        PairRecipe.from_solver("ddim", teacher.path, 4, keep=(0, 9))
    with pytest.raises(ValueError, match="stochastic"):
        PairRecipe.from_solver("sde_dpmpp_2m", teacher.path, 4)
    with pytest.raises(ValueError, match=">= 1 step"):
        PairRecipe.from_solver("ddim", teacher.path, 0)
    with pytest.raises(ValueError, match=">= 1"):
        teacher_pair_dataset(teacher, recipe(teacher), 0)


def test_two_processes_split_the_shards_and_make_the_same_pairs(tmp_path):
    """`accelerate launch --num_processes 2 -m fewstep pairs`: each rank makes its shards; the files equal one process's."""
    args = ["pairs", str(TEACHER), "--n", "20", "--steps", "4", "--shard-size", "6"]
    with single_thread():
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fewstep", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("20 pairs") == 1  # the summary comes from the main process only
    one, two = TeacherPairDataset.load(tmp_path / "one"), TeacherPairDataset.load(tmp_path / "two")
    assert all(torch.equal(a, b) for a, b in zip(one.tensors, two.tensors))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
