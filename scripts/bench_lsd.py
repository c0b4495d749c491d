"""Benchmark LSD / LSD+ (masked discrete diffusion) against the baseline sampler.

    python scripts/bench_lsd.py --out runs/lsd/bench            # chain testbed (exact denoiser)
    python scripts/bench_lsd.py --text-model runs/lsd/text_model  # + the text model

Every method samples the same sequences' noise (one TokenNoise per evaluation seed: the same
unmask thresholds and Gumbel vectors), so differences to the baseline are paired; the tables
give means with 95% normal intervals over sequences. Writes `bench.md` and `bench.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.samplers.discrete import (LSDConfig, MarkovChain, ModelDenoiser, TokenNoise, baseline_spec, fit_lsd, mean_ci,
                                       sample_with_spec, unigram_entropy)
from fewstep.samplers.discrete.lsd import grid_summary

#: (name, learn steps (LSD+), coupling, loss weighting); plus=None is the baseline.
METHODS = [("baseline", None, None, None), ("LSD shared", False, "shared", "per_step"),
           ("LSD indep.", False, "independent", "per_step"), ("LSD+ shared", True, "shared", "per_step"),
           ("LSD+ indep.", True, "independent", "per_step"), ("LSD+ shared, global weighting", True, "shared", "global")]


def selected(names: list[str] | None) -> list:
    """The METHODS rows named (all when None); the baseline is always included."""
    known = [m[0] for m in METHODS]
    unknown = set(names or []) - set(known)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {known}")
    return [m for m in METHODS if names is None or m[0] in names or m[1] is None]


def fit_all(denoiser, M: int, L: int, solver: str, N: int, iters: int, batch: int, methods, relax: float) -> dict:
    """name -> (spec, seconds)."""
    specs = {"baseline": (baseline_spec(M, solver), 0.0)}
    for name, plus, coupling, weighting in methods:
        if plus is None:
            continue
        cfg = LSDConfig(num_steps=M, seq_len=L, teacher_steps=N, solver=solver, learn_steps=plus, coupling=coupling,
                        relax=relax, iters=iters, batch_size=batch, lr=0.05, seed=0, weighting=weighting)
        result = fit_lsd(denoiser, cfg)
        specs[name] = (result.spec, result.seconds)
        print(f"  fitted {name} M={M} {solver}: {result.seconds:.0f}s {grid_summary(result.spec)}", flush=True)
    return specs


def fmt(mean_half: tuple[float, float], digits: int = 3) -> str:
    return f"{mean_half[0]:.{digits}f} ± {mean_half[1]:.{digits}f}"


def evaluate(denoiser, specs: dict, n: int, L: int, score, seed: int = 1234) -> dict:
    """name -> per-sequence metrics (score: x -> dict of [n] tensors; 'nll' first), paired on the same noise."""
    noise = TokenNoise.draw(n, L, denoiser.vocab_size, torch.Generator().manual_seed(seed))
    out = {}
    for name, (spec, _) in specs.items():
        x = sample_with_spec(denoiser, spec, n, L, noise=noise)
        out[name] = {**score(x), "entropy": unigram_entropy(x, denoiser.vocab_size)}
    return out


def chain_tables(args) -> tuple[str, list]:
    torch.set_num_threads(1)
    chain = MarkovChain.random(args.vocab, 3, seed=0)
    denoiser, L = chain.denoiser(), args.length
    data = chain.sample(args.n, L, torch.Generator().manual_seed(0))
    lines = [f"Chain: V={args.vocab}, L={L}, 3 allowed successors per token, leak 1e-3 (seed 0). Exact NLL/token "
             f"{chain.entropy_per_token(L):.3f}; true data: violation rate {chain.violation_rate(data).mean():.4f}, "
             f"entropy {unigram_entropy(data, args.vocab).mean():.3f}. Teacher N={args.teacher_steps}, fit {args.iters} "
             f"iterations x batch {args.batch}, relax {args.relax}; evaluation n={args.n} paired sequences.", ""]
    rows = []
    for solver, steps in (("euler", args.steps), ("tau_leaping", args.tau_steps)):
        for M in steps:
            specs = fit_all(denoiser, M, L, solver, args.teacher_steps, args.iters, args.batch, selected(args.methods), args.relax)
            teacher = {"teacher": (baseline_spec(args.teacher_steps, solver), 0.0)}
            res = evaluate(denoiser, {**specs, **teacher}, args.n, L,
                           lambda x: {"nll": chain.nll_per_token(x), "viol": chain.violation_rate(x)})
            for name, m in res.items():
                diff = m["nll"] - res["baseline"]["nll"]
                rows.append(dict(solver=solver, M=M, method=name, nll=mean_ci(m["nll"]), dnll=mean_ci(diff),
                                 viol=mean_ci(m["viol"]), entropy=mean_ci(m["entropy"]), fit_s=specs.get(name, (None, 0.0))[1],
                                 phi=grid_summary(specs[name][0])["phi"] if name in specs else None,
                                 kappa=grid_summary(specs[name][0])["kappa"] if name in specs else None))
    lines += ["| solver | M | method | NLL/token | Δ NLL vs baseline (paired) | violation rate | entropy | fit s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r["method"] if r["method"] != "teacher" else f"teacher (N={args.teacher_steps})"
        lines.append(f"| {r['solver']} | {r['M']} | {label} | {fmt(r['nll'])} | {fmt(r['dnll'])} | {fmt(r['viol'], 4)} | "
                     f"{fmt(r['entropy'])} | {r['fit_s']:.0f} |")
    return "\n".join(lines), rows


def text_tables(args) -> tuple[str, list]:
    from fewstep.models.masked_transformer import MaskedDiffusionTransformer, model_fingerprint
    from fewstep.distill.objectives.masked_diffusion import nelbo
    from fewstep.samplers.discrete.text import ALPHABET, NGramModel, text_sequences

    torch.set_num_threads(args.threads)
    model = MaskedDiffusionTransformer.from_pretrained(str(args.text_model)).eval()
    denoiser, L, V = ModelDenoiser(model, model_fingerprint(model)), int(model.config.seq_len), len(ALPHABET)
    ngram = NGramModel(text_sequences(L, "train").reshape(-1), V)
    held = text_sequences(L, "test")
    with torch.no_grad():
        elbo = nelbo(model, held)
    lines = [f"Text: `{args.text_model}` (MaskedDiffusionTransformer, {sum(p.numel() for p in model.parameters())/1e3:.0f}k "
             f"parameters, L={L}, V={V}); held-out NELBO {elbo[0]:.3f} ± {elbo[1]:.3f} nats/char. Likelihood proxy: "
             f"4-gram character model fitted on the training split; held-out real text scores "
             f"{fmt(mean_ci(ngram.nll_per_token(held)))} nats/char, entropy {fmt(mean_ci(unigram_entropy(held, V)))}. "
             f"Teacher N={args.text_teacher_steps}, fit {args.text_iters} iterations x batch {args.text_batch}; n={args.text_n}.", ""]
    rows = []
    methods = selected(args.text_methods)
    for M in args.text_steps:
        specs = fit_all(denoiser, M, L, "euler", args.text_teacher_steps, args.text_iters, args.text_batch, methods, args.relax)
        teacher = {"teacher": (baseline_spec(args.text_teacher_steps, "euler"), 0.0)}
        with torch.no_grad():
            res = evaluate(denoiser, {**specs, **teacher}, args.text_n, L, lambda x: {"nll": ngram.nll_per_token(x)})
        for name, m in res.items():
            rows.append(dict(M=M, method=name, nll=mean_ci(m["nll"]), dnll=mean_ci(m["nll"] - res["baseline"]["nll"]),
                             entropy=mean_ci(m["entropy"]), fit_s=specs.get(name, (None, 0.0))[1],
                             phi=grid_summary(specs[name][0])["phi"] if name in specs else None))
    lines += ["| M | method | 4-gram NLL/char | Δ vs baseline (paired) | entropy | fit s |", "|---|---|---|---|---|---|"]
    for r in rows:
        label = r["method"] if r["method"] != "teacher" else f"teacher (N={args.text_teacher_steps})"
        lines.append(f"| {r['M']} | {label} | {fmt(r['nll'])} | {fmt(r['dnll'])} | {fmt(r['entropy'])} | {r['fit_s']:.0f} |")
    return "\n".join(lines), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/lsd/bench"))
    p.add_argument("--vocab", type=int, default=8)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--tau-steps", type=int, nargs="*", default=[8])
    p.add_argument("--teacher-steps", type=int, default=128)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--relax", type=float, default=0.05)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--skip-chain", action="store_true")
    p.add_argument("--methods", nargs="+", default=None, help="chain: methods to fit (default all)")
    p.add_argument("--text-methods", nargs="+", default=["LSD shared", "LSD indep.", "LSD+ shared", "LSD+ shared, global weighting"])
    p.add_argument("--text-model", type=Path, default=None)
    p.add_argument("--text-steps", type=int, nargs="+", default=[8])
    p.add_argument("--text-teacher-steps", type=int, default=64)
    p.add_argument("--text-iters", type=int, default=20)
    p.add_argument("--text-batch", type=int, default=32)
    p.add_argument("--text-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    sections, payload = [], {}
    if not args.skip_chain:
        text, rows = chain_tables(args)
        sections.append(text)
        payload["chain"] = rows
    if args.text_model is not None:
        text, rows = text_tables(args)
        sections.append(text)
        payload["text"] = rows
    md = "\n\n".join(sections) + f"\n\n(total {time.time() - start:.0f} s on this machine)\n"
    (args.out / "bench.md").write_text(md)
    (args.out / "bench.json").write_text(json.dumps(payload, indent=1, default=str))
    print(md)


if __name__ == "__main__":
    main()
