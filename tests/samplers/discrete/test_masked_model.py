"""The masked-diffusion transformer and its NELBO objective: shapes, save/load, the uniform-model closed form, sampling."""

import math

import torch

from fewstep.distill.masked_transformer import MaskedDiffusionTransformer, model_fingerprint
from fewstep.distill.objectives.masked_diffusion import MaskedDiffusion, nelbo, train_plain
from fewstep.samplers.discrete import LogLinearMaskPath, MarkovChain, ModelDenoiser
from fewstep.samplers.discrete.text import ALPHABET, NGramModel, decode, encode


def tiny_model(V=5, L=8):
    torch.manual_seed(0)
    return MaskedDiffusionTransformer(vocab_size=V, seq_len=L, dim=16, num_layers=1, num_heads=2)


def test_save_load_round_trip_and_denoiser(tmp_path):
    model = tiny_model().eval()
    x = torch.tensor([[5, 1, 2, 5, 0, 5, 3, 4]])
    model.save_pretrained(str(tmp_path / "m"))
    loaded = MaskedDiffusionTransformer.from_pretrained(str(tmp_path / "m")).eval()
    assert torch.equal(model(x).sample, loaded(x).sample) and model_fingerprint(model) == model_fingerprint(loaded)
    log_p0 = ModelDenoiser(loaded)(x, torch.tensor(0.5))
    assert log_p0.shape == (1, 8, 5)
    torch.testing.assert_close(log_p0.exp().sum(-1), torch.ones(1, 8))


def test_nelbo_of_a_uniform_model_is_log_v():
    """A model that predicts uniform p0 has NELBO per token E_t[(1-eps)/m(t) * m(t) * log V] = (1 - eps) log V."""
    model = tiny_model(V=5)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    data = MarkovChain.random(5, seed=0).sample(512, 8, torch.Generator().manual_seed(0))
    mean, half = nelbo(model, data, LogLinearMaskPath(1e-3), repeats=8)
    assert abs(mean - (1 - 1e-3) * math.log(5)) < max(3 * half, 0.02)


def test_training_lowers_the_nelbo_and_sampling_unmasks_everything():
    chain = MarkovChain.random(5, seed=0)
    data = chain.sample(512, 8, torch.Generator().manual_seed(0))
    model = tiny_model()
    objective = MaskedDiffusion(model)
    before = nelbo(model, data, repeats=2)[0]
    train_plain(objective, data, steps=60, batch_size=64, lr=3e-3, log_every=0, warmup=5)
    after = nelbo(model, data, repeats=2)[0]
    assert after < before - 0.1
    x = objective.sample(model, torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(0), num_steps=4)
    assert x.shape == (6, 8) and int(x.max()) < 5 and objective.scheduler() is None


def test_text_codec_and_ngram_proxy():
    ids = encode("the quick brown fox jumps over the lazy dog. " * 20)
    assert decode(ids[:9]) == "the quick"
    ngram = NGramModel(ids, len(ALPHABET))
    seen = encode("the lazy dog. the quick")[None]
    unseen = encode("zzqx vvkj wq! ?? zzqx v")[None]
    assert float(ngram.nll_per_token(seen)) < 0.5 < float(ngram.nll_per_token(unseen))
