"""Masked (absorbing) discrete diffusion: log-linear path, samplers with LSD hooks, exact Markov testbed, LSD / LSD+.

    from fewstep.samplers.discrete import MarkovChain, LSDConfig, fit_lsd, sample_with_spec
    chain = MarkovChain.random(vocab_size=8, seed=0)
    result = fit_lsd(chain.denoiser(), LSDConfig(num_steps=8, seq_len=32, teacher_steps=256))
    x = sample_with_spec(chain.denoiser(), result.spec, batch=16, length=32)
"""

from .lsd import (LSDConfig, LSDFitError, LSDResult, baseline_spec, check_spec, closed_form_phi, fit_lsd, lsd_loss,
                  sample_with_spec, step_loss)
from .markov import ChainDenoiser, MarkovChain, mean_ci, unigram_entropy
from .paths import LogLinearMaskPath, check_contains, kappa_from_ts, teacher_grid, ts_from_kappa, uniform_grid
from .samplers import (SOLVERS, DiscreteSampleOutput, DiscreteStepInfo, ModelDenoiser, TokenNoise, all_masked, sample,
                       transition_probs, unmask_probability)

__all__ = [
    "ChainDenoiser", "DiscreteSampleOutput", "DiscreteStepInfo", "LSDConfig", "LSDFitError", "LSDResult",
    "LogLinearMaskPath", "MarkovChain", "ModelDenoiser", "SOLVERS", "TokenNoise", "all_masked", "baseline_spec",
    "check_contains", "check_spec", "closed_form_phi", "fit_lsd", "kappa_from_ts", "lsd_loss", "mean_ci", "sample",
    "sample_with_spec", "step_loss", "teacher_grid", "transition_probs", "ts_from_kappa", "uniform_grid",
    "unigram_entropy", "unmask_probability",
]
