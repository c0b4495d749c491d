"""`fewstep demo` in a reduced mode and `fewstep sample` on the shipped MNIST flow teacher."""

import json

from pathlib import Path

from PIL import Image

from fewstep.cli import main

TEACHER = str(Path(__file__).resolve().parents[1] / "assets" / "teachers" / "mnist_flow")


def test_demo_reduced_mode(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--teachers", "mnist_flow", "--nfe", "2", "6", "--n", "10", "--reference-steps", "12",
                 "--guidance-scale", "1.0", "--audio", "off", "--out", str(out)])
    assert code == 0
    assert not (out / "results_audio.json").exists()
    results = json.loads((out / "results.json").read_text())
    assert {r["sampler"] for r in results} == {"DPM-Solver++(3M), 12 steps", "Euler, uniform", "DPM-Solver++(2M), uniform",
                                               "learned grid (assets/specs)", "MSD students, 1 step (assets/students)",
                                               "SlimFlow 1/2-size student, 1 step"}
    for kind, accuracy in (("MSD students", 0.8), ("SlimFlow", 0.8)):  # (measured on 1,000 images: 98.7 % and 98.8 %)
        student = next(r for r in results if r["sampler"].startswith(kind))
        assert (student["steps"], student["nfe"]) == (1, 1) and student["accuracy"] >= accuracy  # one call, right digits
    learned = [r for r in results if r["sampler"] == "learned grid (assets/specs)"]
    assert [(r["steps"], r["nfe"]) for r in learned] == [(6, 6)]  # a spec is shipped for NFE 6, none for NFE 2
    assert next(r for r in results if r["steps"] == 12)["nfe"] == 12
    error = {(r["sampler"], r["nfe"]): r["rms_to_reference"] for r in results}
    for sampler in ("Euler, uniform", "DPM-Solver++(2M), uniform"):  # more steps land closer to the reference
        assert 0 < error[sampler, 6] < error[sampler, 2]
    assert error["DPM-Solver++(2M), uniform", 6] < error["Euler, uniform", 6]  # higher order helps at equal NFE
    assert all(r["fid"] > 0 and 0 <= r["accuracy"] <= 1 for r in results)
    assert Image.open(out / "fid_vs_nfe.png").size[0] > 100 and Image.open(out / "mnist_flow_samples.png").size[1] > 30
    assert "mnist_flow: FID_10" in capsys.readouterr().out


def test_demo_audio_part_writes_wavs_and_scores_the_shipped_generator(tmp_path, capsys):
    from fewstep.audio import read_audio

    out = tmp_path / "demo"
    assert main(["demo", "--audio", "only", "--audio-n", "8", "--out", str(out)]) == 0
    results = json.loads((out / "results_audio.json").read_text())
    # Euler 60 (ACE-Step's default), Euler / 2M / learned spec at 8; the turbo student at 8 and 1 (no guidance)
    assert [r["nfe"] for r in results] == [60, 8, 8, 8, 8, 1]
    assert [r["sampler"] for r in results][-2:] == ["turbo student, 8 steps", "turbo student, 1 step"]
    assert all(r["fd"] >= 0 and 0 <= r["accuracy"]["instrument"] <= 1 and r["real_time_factor"] > 0 for r in results)
    audio, rate = read_audio(out / "audio" / "dpm_solver_2m_8_steps" / "00.wav")
    assert rate == 8000 and audio.shape == (1, 16384)
    assert Image.open(out / "audio" / "euler_8_steps.png").size[0] > 100
    assert read_audio(out / "audio" / "turbo_student_1_step" / "00.wav")[0].shape == (1, 16384)
    assert not (out / "results.json").exists()  # the MNIST part was skipped
    assert "Music generator" in capsys.readouterr().out


def test_sample_writes_pngs_and_refuses_a_used_folder(tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", TEACHER, "--steps", "2", "--n", "4", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["000000_class0.png", "000001_class1.png", "000002_class2.png", "000003_class3.png"]
    assert Image.open(out / names[0]).size == (32, 32)
    assert json.loads((out / "sampling.json").read_text())["nfe"] == 2
    assert main(["sample", TEACHER, "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_sample_with_a_spec_uses_its_grid_weights_and_evaluation_times(tmp_path):
    """PNGs written from a spec with decoupled evaluation times equal sample() with the spec's arguments."""
    import numpy as np
    import torch

    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images
    from fewstep.samplers import RectifiedFlowPath, get_schedule
    from fewstep.samplers.spec import SamplerSpec

    path = RectifiedFlowPath()
    ts = get_schedule("uniform", path, 3)
    spec = SamplerSpec.from_grid("dpmpp_2m", ts, path, coeffs=torch.tensor([[1.0, 0.0], [1.3, -0.3], [1.0, 0.0]]),
                                 eval_ts=torch.tensor([0.95, 0.6, 0.25], dtype=torch.float64))
    spec.save(tmp_path / "spec.safetensors")
    out = tmp_path / "samples"
    assert main(["sample", TEACHER, "--spec", str(tmp_path / "spec.safetensors"), "--n", "3", "--out", str(out)]) == 0
    expected, _, _ = generate_images(load_teacher(TEACHER), num_images=3, **spec.sample_args())
    plain, _, _ = generate_images(load_teacher(TEACHER), num_images=3, ts=ts, solver="dpmpp_2m")
    written = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    assert np.array_equal(written, expected[:, 0].numpy()) and not np.array_equal(written, plain[:, 0].numpy())
