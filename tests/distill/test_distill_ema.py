"""The loop's EMA equals diffusers' EMAModel rule computed by hand from the raw weights of every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import single_thread, tiny_config
from safetensors.torch import load_file

from fewstep.distill.loop import Trainer, train


def ema_decay(step: int, decay: float, warmup: bool, update_after_step: int = 0, inv_gamma: float = 1.0,
              power: float = 2 / 3, min_decay: float = 0.0) -> float:
    """diffusers' `EMAModel.get_decay` after `step` calls of `EMAModel.step` (the defaults are what the loop uses)."""
    k = max(0, step - update_after_step - 1)
    if k <= 0:
        return 0.0
    schedule = 1 - (1 + k / inv_gamma) ** -power if warmup else (1 + k) / (10 + k)
    return max(min(schedule, decay), min_decay)


def test_decay_schedule_by_hand() -> None:
    """The hand rule on a few values, so the loop test below compares against known numbers."""
    assert [ema_decay(k, 0.3, False) for k in (1, 2, 3, 4, 9)] == pytest.approx([0, 2 / 11, 3 / 12, 0.3, 0.3])
    assert [ema_decay(k, 0.9, True) for k in (1, 2, 3)] == pytest.approx([0, 1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3)])
    assert ema_decay(2, 0.3, True) == 0.3


@pytest.mark.parametrize("warmup", [False, True])
def test_exported_ema_weights_follow_the_ema_rule_step_by_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               warmup: bool) -> None:
    decay, steps = 0.3, 6  # below and at the cap of both schedules
    raw: list[dict[str, torch.Tensor]] = []
    real_step = Trainer.train_step

    def recording_step(self, step, batches):
        logs = real_step(self, step, batches)
        raw.append({name: p.detach().double().clone() for name, p in self.networks()["model"].named_parameters()})
        return logs

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    with single_thread():
        result = train(tiny_config(tmp_path / "run", f"max_steps={steps}", "optim.lr=1e-2",
                                   f"optim.ema_decay={decay}", f"optim.ema_warmup={str(warmup).lower()}"))
    assert len(raw) == steps
    # shadow_k = d_k * shadow_{k-1} + (1 - d_k) * raw_k, with d_1 = 0 (the first update copies the weights)
    expected = {name: torch.zeros_like(w) for name, w in raw[0].items()}
    for k, weights in enumerate(raw, start=1):
        d = ema_decay(k, decay, warmup)
        expected = {name: d * expected[name] + (1 - d) * weights[name] for name in weights}
    exported = load_file(str(result.pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    for name, value in expected.items():
        torch.testing.assert_close(exported[name].double(), value, rtol=1e-5, atol=1e-6, msg=name)
    # not a tautology: the EMA is neither the last raw weights nor the first
    assert max((expected[n] - raw[-1][n]).abs().max().item() for n in expected) > 1e-4
    assert max((expected[n] - raw[0][n]).abs().max().item() for n in expected) > 1e-4
