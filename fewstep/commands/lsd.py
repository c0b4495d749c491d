"""`fewstep lsd`: LSD / LSD+ for masked discrete diffusion (fit, sample).

The text model they run on is trained by the shared trainer loop:
`fewstep train assets/configs/text_masked.yaml` (shipped as assets/teachers/text_masked).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TESTBEDS = ("chain", "text")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lsd",
        help="learned few-step samplers for masked discrete diffusion (LSD / LSD+, Fu et al. 2025)",
        description="Fit per-step score coefficients Phi (LSD) and step sizes (LSD+) of a few-step masked-diffusion "
                    "sampler against a many-step teacher, or sample with a fitted spec. Train a text model with "
                    "`fewstep train assets/configs/text_masked.yaml`.",
    )
    sub = parser.add_subparsers(dest="lsd_command", metavar="ACTION", required=True)

    fit = sub.add_parser("fit", help="fit a sampler spec (safetensors) for M steps")
    _add_model_args(fit)
    fit.add_argument("--steps", "-M", type=int, required=True, help="student steps M")
    fit.add_argument("--teacher-steps", "-N", type=int, default=256, help="teacher steps N, a multiple of M (default 256)")
    fit.add_argument("--solver", default="euler", help="euler | tau_leaping | tweedie (default euler)")
    fit.add_argument("--plus", action="store_true", help="LSD+: also learn the step sizes kappa")
    fit.add_argument("--coupling", default="shared", choices=["shared", "independent"],
                     help="shared: student and teacher use the same thresholds and Gumbel noise per token (default)")
    fit.add_argument("--weighting", default="per_step", choices=["per_step", "global"],
                     help="per_step: mean of per-step relative errors (paper); global: one normalisation over all "
                          "steps, so steps count by their jump mass (default per_step)")
    fit.add_argument("--relax", type=float, default=0.05, help="relaxed-start Hamming radius / length (default 0.05)")
    fit.add_argument("--iters", type=int, default=100)
    fit.add_argument("--batch-size", type=int, default=64)
    fit.add_argument("--lr", type=float, default=0.02)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", type=Path, required=True, help="spec file to write (.safetensors)")

    smp = sub.add_parser("sample", help="sample with a fitted spec (or the baseline) and print quality metrics")
    _add_model_args(smp)
    smp.add_argument("--spec", type=Path, default=None, help="fitted spec; default: baseline (uniform grid, Phi = 1)")
    smp.add_argument("--steps", "-M", type=int, default=None, help="step count (must match the spec; required without one)")
    smp.add_argument("--solver", default="euler")
    smp.add_argument("--num", type=int, default=512)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--show", type=int, default=4, help="print this many samples (text)")

    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--testbed", choices=TESTBEDS, default="chain",
                        help="chain: exact Markov-chain denoiser; text: a trained model (--model)")
    parser.add_argument("--model", type=Path, default=None,
                        help="text: a masked-diffusion model folder (run_dir/pipeline of `fewstep train "
                             "assets/configs/text_masked.yaml`); default: the shipped assets/teachers/text_masked")
    parser.add_argument("--vocab", type=int, default=8, help="chain: vocabulary size (default 8)")
    parser.add_argument("--length", type=int, default=32, help="chain: sequence length (default 32)")
    parser.add_argument("--chain-seed", type=int, default=0, help="chain: seed of the random rules")


def load_testbed(args) -> tuple[object, int, object]:
    """(denoiser, sequence length, chain or None) for --testbed."""
    from fewstep.samplers.discrete import MarkovChain, ModelDenoiser

    if args.testbed == "chain":
        chain = MarkovChain.random(args.vocab, min(3, args.vocab), seed=args.chain_seed)
        return chain.denoiser(), args.length, chain
    from fewstep.io import assets_dir
    from fewstep.models.masked_transformer import MaskedDiffusionTransformer, model_fingerprint

    folder = args.model or assets_dir() / "teachers" / "text_masked"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass --model with the run_dir/pipeline folder of "
                                "`fewstep train assets/configs/text_masked.yaml`")
    model = MaskedDiffusionTransformer.from_pretrained(str(folder)).eval()
    return ModelDenoiser(model, model_fingerprint(model)), int(model.config.seq_len), None


def run(args) -> int:
    import torch

    denoiser, length, chain = load_testbed(args)
    if args.lsd_command == "fit":
        from fewstep.samplers.discrete import LSDConfig, LSDFitError, fit_lsd
        from fewstep.samplers.discrete.lsd import grid_summary

        if args.out.suffix != ".safetensors":
            raise ValueError(f"--out {args.out} should end in .safetensors")
        cfg = LSDConfig(num_steps=args.steps, seq_len=length, teacher_steps=args.teacher_steps, solver=args.solver,
                        learn_steps=args.plus, coupling=args.coupling, relax=args.relax, iters=args.iters,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, weighting=args.weighting)
        try:
            result = fit_lsd(denoiser, cfg, progress=True)
        except LSDFitError as error:
            error.last_good.save(args.out)
            raise ValueError(f"{error} (written to {args.out})") from error
        result.spec.save(args.out)
        print(json.dumps({"spec": str(args.out), "seconds": round(result.seconds, 1), "final_loss": result.losses[-1],
                          **grid_summary(result.spec)}))
        return 0
    from fewstep.samplers.discrete import TokenNoise, baseline_spec, sample_with_spec, unigram_entropy
    from fewstep.samplers.spec import SamplerSpec

    if args.spec is None:
        if args.steps is None:
            raise ValueError("pass --spec FILE or --steps M (baseline sampler)")
        spec = baseline_spec(args.steps, args.solver)
    else:
        spec = SamplerSpec.load(args.spec)
    noise = TokenNoise.draw(args.num, length, denoiser.vocab_size, torch.Generator().manual_seed(args.seed))
    x = sample_with_spec(denoiser, spec, args.num, length, noise=noise, num_steps=args.steps)
    report = {"steps": spec.num_steps, "entropy": float(unigram_entropy(x, denoiser.vocab_size).mean())}
    if chain is not None:
        report.update(nll_per_token=float(chain.nll_per_token(x).mean()), violation_rate=float(chain.violation_rate(x).mean()),
                      exact_nll_per_token=chain.entropy_per_token(length))
    else:
        from fewstep.samplers.discrete.text import ALPHABET, NGramModel, decode, text_sequences

        ngram = NGramModel(text_sequences(length, "train").reshape(-1), len(ALPHABET))
        report["ngram_nll_per_char"] = float(ngram.nll_per_token(x).mean())
        for row in x[: args.show]:
            print(repr(decode(row)))
    print(json.dumps(report))
    return 0
