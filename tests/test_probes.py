"""Layer-wise NIAH probes: features of a real DecoderLM, stratified split, probe accuracy vs known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmrepro.eval.probes import layer_features, layerwise_probe, probe_accuracy, stratified_split
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.hybrid import layers_from_pattern

V = 53


def make_model(pattern, seed=0) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=V, hidden_size=32, num_layers=len(pattern), num_heads=4, num_kv_heads=2,
                  intermediate_size=48, max_seq_len=64, layers=layers_from_pattern(pattern),
                  ssm_head_dim=16, ssm_state_size=8)
    return DecoderLM(spec).double().eval()


def blobs(n_per_class, classes, dim, spread, seed):
    """Gaussian blobs: class c centred at 3·e_c (separable for a small spread), labels shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), n_per_class))
    centres = 3.0 * np.eye(classes, dim)
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


# ---------------------------------------------------------------- probe accuracy

@pytest.mark.parametrize("classes,dim", [(8, 16), (2, 5), (3, 40)])
def test_separable_features_are_decoded_perfectly(classes, dim):
    x, y = blobs(25, classes, dim, spread=0.1, seed=classes)
    assert probe_accuracy(x, y) == 1.0


def test_pure_noise_is_at_chance():
    # 8 classes, 400 examples (80 test): one split's accuracy has sd ≈ 0.037; the mean of 5 seeds ≈ 0.016.
    rng = np.random.default_rng(0)
    accs = []
    for seed in range(5):
        y = np.repeat(np.arange(8), 50)
        x = rng.standard_normal((400, 24))
        accs.append(probe_accuracy(x, y, seed=seed))
    assert abs(np.mean(accs) - 1 / 8) < 0.06
    assert max(accs) < 0.3


def test_probe_accuracy_is_the_sklearn_pipeline_on_the_split():
    # The accuracy equals the fraction of test rows a separately fitted probe gets right.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(20, 4, 6, spread=2.0, seed=3)  # overlapping: accuracy strictly between chance and 1
    train, test = stratified_split(y, 0.2, seed=7)
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(C=0.1, max_iter=5000).fit(scaler.transform(x[train]), y[train])
    expected = np.mean(clf.predict(scaler.transform(x[test])) == y[test])
    assert probe_accuracy(x, y, seed=7) == pytest.approx(expected)
    assert 0.25 < expected < 1.0


@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [40, 10, 25, 5], [7, 13]])
@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_split_keeps_class_shares(counts, seed):
    y = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    train, test = stratified_split(y, 0.2, seed)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    for c, n in enumerate(counts):
        assert abs(np.sum(y[test] == c) - 0.2 * n) <= 1
        assert np.sum(y[train] == c) >= 1


@pytest.mark.parametrize("labels,test_size,match", [
    ([0, 0, 0, 0], 0.2, "2 classes"),
    ([0, 0, 1], 0.2, ">= 2 examples"),
    ([0, 0, 1, 1, 2, 2], 0.2, "more examples"),
    ([0, 1] * 5, 1.0, "test_size"),
])
def test_split_rejects_unprobeable_labels(labels, test_size, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(labels, test_size)


def test_layerwise_probe_scores_each_layer():
    sep, y = blobs(20, 4, 8, spread=0.1, seed=1)
    noise = np.random.default_rng(2).standard_normal(sep.shape)
    accs = layerwise_probe(np.stack([noise, sep]), y)
    assert len(accs) == 2 and accs[1] == 1.0 and accs[0] < 0.6


# ---------------------------------------------------------------- features of a real model

@pytest.mark.parametrize("pattern", [["full", "full"], ["swa-3", "full-nope", "mamba2"]])
def test_layer_features_are_the_hidden_states_at_the_last_token(pattern):
    model = make_model(pattern)
    lengths = [5, 9, 9, 3, 12]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (n,), generator=g) for n in lengths]
    feats = layer_features(model, prompts, batch_size=2)  # batches of unequal lengths: padded
    n_layers = len(pattern)
    assert feats["residual"].shape == (n_layers + 1, len(prompts), 32)
    assert feats["delta"].shape == (n_layers, len(prompts), 32)
    with torch.no_grad():
        for j, p in enumerate(prompts):
            states = model.hidden_states(p[None])  # each prompt alone: no padding
            want = np.stack([s[0, -1].numpy() for s in states])
            np.testing.assert_allclose(feats["residual"][:, j], want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(feats["residual"][0, j], model.embed_tokens.weight[p[-1]].numpy(),
                                       rtol=1e-6)
    np.testing.assert_allclose(feats["residual"][0] + feats["delta"].sum(0), feats["residual"][-1], atol=1e-5)


def test_layer_features_position_and_tensor_input():
    model = make_model(["full"])
    ids = torch.randint(0, V, (4, 7), generator=torch.Generator().manual_seed(1))
    at2 = layer_features(model, ids, position=2)["residual"]
    np.testing.assert_allclose(at2[0], model.embed_tokens.weight[ids[:, 2]].detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(layer_features(model, ids, position=-5)["residual"], at2)
    with pytest.raises(ValueError, match="position 7"):
        layer_features(model, ids, position=7)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        layer_features(model, ids[0])
