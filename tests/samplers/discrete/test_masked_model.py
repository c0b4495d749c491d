"""The masked-diffusion transformer and its NELBO objective: shapes, save/load, the uniform-model closed form, sampling."""

import math

import torch

from fewstep.models.masked_transformer import MaskedDiffusionTransformer, model_fingerprint
import json

import pytest

from fewstep.data import get_dataset
from fewstep.distill.config import load_config
from fewstep.distill.loop import Trainer, train
from fewstep.distill.objectives.masked_diffusion import MaskedDiffusion, nelbo
from fewstep.samplers.discrete import LogLinearMaskPath, MarkovChain, ModelDenoiser
from fewstep.samplers.discrete.text import ALPHABET, NGramModel, decode, encode, stdlib_text


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
    # the denoiser is the saved network's log-softmax over the 5 real tokens (original model, before saving)
    logits = model(x).sample
    torch.testing.assert_close(log_p0, logits - logits.exp().sum(-1, keepdim=True).log(), rtol=1e-5, atol=1e-6)


def test_nelbo_of_a_uniform_model_is_log_v():
    """A model that predicts uniform p0 has NELBO per token E_t[(1-eps)/m(t) * m(t) * log V] = (1 - eps) log V."""
    model = tiny_model(V=5)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    data = MarkovChain.random(5, seed=0).sample(512, 8, torch.Generator().manual_seed(0))
    mean, half = nelbo(model, data, LogLinearMaskPath(1e-3), repeats=8)
    assert abs(mean - (1 - 1e-3) * math.log(5)) < max(3 * half, 0.02)


def chain_config(run_dir, *overrides):
    """The masked transformer on 8-token sequences of the 5-token Markov-chain testbed, through the trainer loop."""
    return load_config(None, [
        f"run_dir={run_dir}", "log_with=none", "checkpoint_every=0", "sample_steps=4", "samples_per_class=3",
        "model.type=masked_transformer", "model.vocab_size=5", "model.seq_len=8", "model.width=16",
        "model.num_layers=1", "model.num_heads=2", "objective.name=masked_diffusion",
        "data.name=markov", "data.options={vocab_size: 5, seq_len: 8, n: 512}", "data.batch_size=64",
        "optim.lr=3e-3", "optim.ema_decay=0", *overrides])


def test_trainer_loop_trains_the_masked_model_and_exports_it(tmp_path):
    """Through the loop the model learns the chain's context: its held-out NELBO falls well below the
    unigram entropy (what a context-blind model reaches) and stays above the chain's exact entropy rate."""
    torch.manual_seed(0)
    data = get_dataset("markov", vocab_size=5, seq_len=8, n=512)
    frequencies = torch.bincount(data.sequences.flatten(), minlength=5).double() / data.sequences.numel()
    unigram_entropy = float(-(frequencies * frequencies.log()).nan_to_num().sum())
    exact = data.chain.entropy_per_token(8)
    result = train(chain_config(tmp_path / "run", "max_steps=200"))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    model = MaskedDiffusionTransformer.from_pretrained(str(result.pipeline)).eval()
    after, half = nelbo(model, data.held_out(), repeats=4)
    assert exact - 3 * half < after < unigram_entropy - 0.2
    info = json.loads((result.pipeline / "data.json").read_text())
    assert info["corpus"] == data.corpus and info["model_id"] == model_fingerprint(model)
    assert info["held_out_nelbo_per_token"]["mean"] == pytest.approx(after, abs=0.1)
    preview = (tmp_path / "run" / "samples" / "step_000200.txt").read_text().splitlines()
    assert len(preview) == 3 and all(len(line.strip("'").split()) == 8 for line in preview)
    x = MaskedDiffusion(model).sample({"model": model}, torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(0), num_steps=4)
    assert x.shape == (6, 8) and int(x.max()) < 5


def test_masked_config_mismatches_are_named(tmp_path):
    with pytest.raises(ValueError, match="model.type=masked_transformer goes with objective.name=masked_diffusion"):
        chain_config(tmp_path, "objective.name=flow_matching")
    with pytest.raises(ValueError, match="model.vocab_size=5"):
        Trainer(chain_config(tmp_path / "v", "model.vocab_size=7"))
    with pytest.raises(ValueError, match="model.seq_len"):
        Trainer(chain_config(tmp_path / "l", "data.options={vocab_size: 5, seq_len: 16, n: 512}"))


def test_text_dataset_holds_out_the_end_of_the_corpus():
    train_set, test_set = get_dataset("text", seq_len=32), get_dataset("text", split="test", seq_len=32)
    assert train_set.vocab_size == len(ALPHABET) and train_set[0][0].shape == (32,)
    assert torch.equal(train_set.held_out(), test_set.sequences)
    assert (len(train_set) + len(test_set)) * 32 <= len(stdlib_text())
    # windows are consecutive: the first training window is the corpus' first 32 characters, the first
    # held-out one starts at 90% of it
    text = stdlib_text()
    assert train_set.decode(train_set[0][0]) == text[:32] and train_set.decode(train_set[1][0]) == text[32:64]
    cut = int(len(text) * 0.9)
    assert test_set.decode(test_set[0][0]) == text[cut:cut + 32]
    assert decode(torch.tensor([len(ALPHABET)])) == "\u2588"  # the mask id prints as a block


def test_text_codec_and_ngram_proxy():
    ids = encode("the quick brown fox jumps over the lazy dog. " * 20)
    assert decode(ids[:9]) == "the quick"
    ngram = NGramModel(ids, len(ALPHABET))
    seen = encode("the lazy dog. the quick")[None]
    unseen = encode("zzqx vvkj wq! ?? zzqx v")[None]
    assert float(ngram.nll_per_token(seen)) < 0.5 < float(ngram.nll_per_token(unseen))
