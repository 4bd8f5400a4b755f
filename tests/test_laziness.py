"""Attention maps, gradient influence and retrieval-head scores on real DecoderLMs (random or hand-set weights)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from lmrepro.eval.attention_maps import attention_layers, attention_probs, layer_qkv
from lmrepro.eval.laziness import (
    NeedleSample,
    gradient_influence,
    head_stats,
    influence_by_distance,
    retrieval_head_scores,
    retrieval_heads,
    top_heads,
    trace_heads,
    wu_retrieval_score,
)
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.hybrid import layers_from_pattern
from lmrepro.models.receptive import restrict_receptive_field

V = 32


def make_model(pattern, heads=4, kv=4, hidden=32, seed=0) -> DecoderLM:
    torch.manual_seed(seed)
    spec = LMSpec(vocab_size=V, hidden_size=hidden, num_layers=len(pattern), num_heads=heads, num_kv_heads=kv,
                  intermediate_size=48, max_seq_len=128, layers=layers_from_pattern(pattern), init_std=0.3,
                  ssm_head_dim=16, ssm_state_size=8)
    return DecoderLM(spec).double().eval()


def ids_of(b, t, seed=1, low=0, high=V):
    return torch.randint(low, high, (b, t), generator=torch.Generator().manual_seed(seed))


def visible(t, window):
    """Independent mask: key j visible from query i iff j <= i and (no window or i - j < window)."""
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    return (j <= i) & (True if window is None else (i - j < window))


# ---------------------------------------------------------------- attention maps

MAP_CASES = {
    "full": (["full", "full"], 4, 4, None),
    "window": (["full", "swa-3"], 4, 4, None),
    "nope": (["swa-2", "full-nope"], 4, 4, None),
    "gqa": (["full", "swa-5"], 4, 2, None),
    "mqa-nope-window": (["swa-4-nope", "full"], 4, 1, None),
    "restricted": (["full", "full"], 4, 2, ("full", 3, 2)),
    # An SWA layer wider than the limit is narrowed to it plus sinks; one within the limit is kept as it is.
    "restricted-swa-narrowed": (["swa-3", "full"], 4, 2, ("efficient", 2, 2)),
    "restricted-swa-kept": (["swa-3", "full"], 4, 2, ("efficient", 8, 2)),
}


@pytest.mark.parametrize("name", MAP_CASES)
@pytest.mark.parametrize("t", [1, 11])
def test_probs_times_v_is_the_mixer_output_before_o_proj(name, t):
    pattern, heads, kv, restriction = MAP_CASES[name]
    model = make_model(pattern, heads, kv)
    ids = ids_of(2, t)
    seen = {}
    hooks = [model.layers[i].mixer.o_proj.register_forward_pre_hook(
        lambda m, args, i=i: seen.__setitem__(i, args[0].detach())) for i in range(len(pattern))]
    try:
        if restriction is None:
            model(ids)
            probs, states = attention_probs(model, ids), model.hidden_states(ids)
        else:
            with restrict_receptive_field(model, *restriction) as chosen:
                model(ids)
                probs, states = attention_probs(model, ids), model.hidden_states(ids)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(probs) == list(range(len(pattern)))
    for i, p in probs.items():
        assert p.shape == (2, heads, t, t)
        _, _, v = layer_qkv(model, i, states[i])
        vh = v.repeat_interleave(heads // kv, dim=2).transpose(1, 2)  # [B, H, T, D]
        out = (p @ vh).transpose(1, 2).reshape(2, t, -1)
        torch.testing.assert_close(out, seen[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, heads, t, dtype=p.dtype))
        window = model.layers[i].layer.window
        mask = visible(t, window)
        if restriction is not None and i in chosen and (window is None or window > restriction[1]):
            _, limit, sinks = restriction  # causal, last `limit` tokens plus the first `sinks`
            dist = np.arange(t)[:, None] - np.arange(t)[None, :]
            mask = (dist >= 0) & ((dist < limit) | (np.arange(t)[None, :] < sinks))
        assert torch.all(p[..., torch.from_numpy(~mask)] == 0)
        assert torch.all(p[..., torch.from_numpy(mask)] > 0)


def test_query_positions_select_rows_and_layers_are_checked():
    model = make_model(["swa-3", "mamba2", "full"])
    ids = ids_of(1, 9)
    every = attention_probs(model, ids)
    assert sorted(every) == [0, 2] == attention_layers(model)
    assert attention_layers(model, full_only=True) == [2]
    some = attention_probs(model, ids, layers=[2], query_positions=[-1, 0, 4])
    assert list(some) == [2]
    torch.testing.assert_close(some[2], every[2][:, :, [8, 0, 4]], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"\[1\] are not softmax-attention layers"):
        attention_probs(model, ids, layers=[1])
    with pytest.raises(ValueError, match="query_positions"):
        attention_probs(model, ids, query_positions=[9])


# ---------------------------------------------------------------- gradient influence

def manual_influence(model, ids, last):
    """Reference: the embedding output as a leaf, the blocks called one by one."""
    e = model.embed_tokens(ids).detach().requires_grad_(True)
    x, positions = e, torch.arange(ids.shape[1])
    for block in model.layers:
        x = block(x, positions)
    target = model.lm_head(model.norm(x))[0, -last:].sum() / last
    (grad,) = torch.autograd.grad(target, e)
    return grad[0].norm(dim=-1).numpy()


@pytest.mark.parametrize("pattern,reach", [
    (["swa-4"], 20 + 3),
    (["swa-4-nope"], 20 + 3),
    (["swa-2", "swa-5"], 20 + 1 + 4),
    (["swa-3", "swa-3", "swa-3"], 20 + 6),
    (["full"], 40),
    (["swa-4", "full"], 40),
    (["mamba2", "swa-4"], 40),
])
def test_gradient_influence_is_zero_exactly_beyond_the_receptive_field(pattern, reach):
    model = make_model(pattern)
    ids = ids_of(1, 40)
    infl = gradient_influence(model, ids, last=20)
    assert infl.shape == (40,)
    np.testing.assert_allclose(infl, manual_influence(model, ids, 20), rtol=1e-10)
    by_dist = influence_by_distance(infl)
    assert np.all(by_dist[:reach] > 0)
    assert np.all(by_dist[reach:] == 0)
    assert not any(p.grad is not None for p in model.parameters())  # only the input gradient was taken


def test_influence_by_distance_counts_from_the_end():
    np.testing.assert_array_equal(influence_by_distance([1.0, 2.0, 3.0, 5.0]), [5.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(influence_by_distance([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]]), [5.0, 3.0, 2.0])
    model = make_model(["swa-4"])
    ids = ids_of(1, 30)
    infl = gradient_influence(model, ids, last=5)
    assert influence_by_distance(infl)[0] == infl[-1] and influence_by_distance(infl)[29] == infl[0]
    with pytest.raises(ValueError, match="last"):
        gradient_influence(model, ids, last=31)
    with pytest.raises(ValueError, match=r"\[1, T\]"):
        gradient_influence(model, ids.repeat(2, 1))


# ---------------------------------------------------------------- hand-set heads

NEEDLE = (9, 12)


def pointing_model(pattern, points: dict, copy_head=None) -> DecoderLM:
    """Real DecoderLM whose weights are set by hand (NoPE attention, 2 heads of dim 16, vocab = hidden = 32).

    Embeddings and lm_head are the identity, every other weight is 0 (so each layer's input is the one-hot
    embedding). ``points[(layer, head)] = c``: that head's query is c·Σx and its key 2·x[9] + x[12], so it
    attends to needle token 9 (score 16c), less to 12 (8c), and uniformly elsewhere; every other head has
    zero q, k: uniform attention. ``copy_head``: (layer, head) whose value x[9] is written ×10 into the
    residual's dimension 9, so the model then generates token 9.
    """
    model = make_model(pattern, heads=2, kv=2)
    d = 16
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.zero_()
        model.embed_tokens.weight.copy_(torch.eye(V))
        model.lm_head.weight.copy_(torch.eye(V))
        for (layer, head), c in points.items():
            mixer = model.layers[layer].mixer
            mixer.q_proj.weight[head * d] = c
            mixer.k_proj.weight[head * d, NEEDLE[0]] = 2.0
            mixer.k_proj.weight[head * d, NEEDLE[1]] = 1.0
        if copy_head is not None:
            mixer = model.layers[copy_head[0]].mixer
            mixer.v_proj.weight[copy_head[1] * d, NEEDLE[0]] = 1.0
            mixer.o_proj.weight[NEEDLE[0], copy_head[1] * d] = 10.0
    return model


def needle_samples(n=3, t=20, at=(5, 11, 3)):
    """Prompts of non-needle tokens with the needle (9, 12) at position at[s]."""
    out = []
    for s in range(n):
        ids = ids_of(1, t, seed=10 + s, low=13, high=V)[0].tolist()
        ids[at[s]:at[s] + 2] = NEEDLE
        out.append(NeedleSample(ids, (at[s], at[s] + 2)))
    return out


def test_attention_mass_finds_the_pointing_head_and_top_heads_filters_layers():
    model = pointing_model(["swa-64-nope", "full-nope"], {(0, 0): 2.0, (1, 1): 1.0})
    samples = needle_samples()
    scores = retrieval_head_scores(model, samples)
    assert scores.shape == (2, 2)
    assert scores[0, 0] > 0.999 and scores[1, 1] > 0.999
    # A zero-weight head spreads its mass uniformly over the 19 keys the query (position 18) sees.
    assert scores[1, 0] == pytest.approx(2 / 19, rel=1e-12) and scores[0, 1] == pytest.approx(2 / 19, rel=1e-12)
    assert top_heads(scores, model, k=1) == [(1, 1)]  # default: full-attention layers only
    assert top_heads(scores, model, k=2, layers=[0, 1]) == [(0, 0), (1, 1)]  # c=2 is the sharper head
    assert top_heads(scores, model, k=2) == [(1, 1), (1, 0)]
    with pytest.raises(ValueError, match="k must be"):
        top_heads(scores, model, k=3)
    dict_samples = [{"prompt_ids": list(s.prompt_ids), "answer_span": s.answer_span} for s in samples]
    np.testing.assert_array_equal(retrieval_head_scores(model, dict_samples), scores)


def test_normalized_entropy_is_one_for_uniform_and_zero_for_a_single_key():
    model = pointing_model(["swa-1-nope", "swa-3-nope", "full-nope"], {(2, 1): 1.0})
    mass, entropy = head_stats(model, needle_samples())
    np.testing.assert_allclose(entropy[0], 0.0)  # one visible key: perfectly sharp by convention
    np.testing.assert_allclose(entropy[1], 1.0, rtol=1e-12)  # uniform over 3 keys
    assert entropy[2, 0] == pytest.approx(1.0, rel=1e-12)
    assert 0 <= entropy[2, 1] < 0.01  # the pointing head is sharp
    assert np.all(mass[0] == 0)  # a window of 1 sees only the query token, not the needle
    rand = make_model(["swa-3", "full", "full-nope"], heads=4, kv=2)
    samples = needle_samples()
    _, ent = head_stats(rand, samples)
    assert np.all((ent >= 0) & (ent <= 1))
    # Reference: entropy of the full attention matrix's last 4 rows, over log(#visible keys), mean over samples.
    want = np.zeros_like(ent)
    for s in samples:
        probs = attention_probs(rand, torch.tensor([s.prompt_ids]))
        for r, i in enumerate([0, 1, 2]):
            p = probs[i][0, :, -4:].numpy()  # [H, 4, T]
            n = visible(len(s.prompt_ids), rand.layers[i].layer.window)[-4:].sum(-1)
            h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
            want[r] += (h / np.log(n)).mean(-1) / len(samples)
    np.testing.assert_allclose(ent, want, rtol=1e-10)


def test_wu_score_counts_copied_needle_positions():
    model = pointing_model(["full-nope"], {(0, 1): 1.0}, copy_head=(0, 1))
    samples = needle_samples()
    scores = wu_retrieval_score(model, samples, max_new_tokens=3)
    # Head 1 copies token 9 (one of the needle's 2 positions); head 0's uniform top-1 is position 0.
    np.testing.assert_array_equal(scores, [[0.0, 0.5]])
    assert retrieval_heads(scores, model, threshold=0.1) == [(0, 1)]
    assert retrieval_heads(scores, model, threshold=0.5) == []
    # Without the copy path the model repeats the prompt's last token: attending to 9 is no copy.
    silent = pointing_model(["full-nope"], {(0, 1): 1.0})
    np.testing.assert_array_equal(wu_retrieval_score(silent, samples, max_new_tokens=3), [[0.0, 0.0]])
    rand = wu_retrieval_score(make_model(["swa-3", "full"]), samples, max_new_tokens=2)
    assert rand.shape == (2, 4) and np.all((rand >= 0) & (rand <= 1))


def test_needle_sample_validates_its_span():
    with pytest.raises(ValueError, match="answer_span"):
        NeedleSample([1, 2, 3, 4], (2, 3))  # ends after the query position 2
    with pytest.raises(ValueError, match="answer_span"):
        NeedleSample([1, 2, 3, 4], (1, 1))
    assert NeedleSample([1, 2, 3, 4], (0, 2)).query_position == 2


# ---------------------------------------------------------------- tracing across checkpoints

def test_trace_heads_frobenius_drift_against_a_hand_perturbed_checkpoint():
    early = make_model(["swa-3", "full"], heads=4, kv=2, hidden=32)  # head_dim 8, 2 query heads per kv head
    late = copy.deepcopy(early)
    with torch.no_grad():
        late.layers[1].mixer.q_proj.weight[3 * 8:4 * 8] += 0.1  # head 3: ‖Δ‖_F = 0.1·sqrt(8·32) = 1.6
        late.layers[1].mixer.k_proj.weight[0:8] -= 0.05  # kv head 0 (query heads 0, 1): ‖Δ‖_F = 0.8
    heads = [(1, 3), (1, 1), (0, 1)]  # head 1 reads kv head 1 // 2 = 0
    samples = needle_samples()
    trace = trace_heads([early, late], heads, samples)  # reference: the last checkpoint
    assert [r["checkpoint"] for r in trace] == [0, 1] and trace[0]["heads"] == [[1, 3], [1, 1], [0, 1]]
    q_ref = late.layers[1].mixer.q_proj.weight[24:32].norm().item()
    k_ref = late.layers[1].mixer.k_proj.weight[0:8].norm().item()
    np.testing.assert_allclose(trace[0]["wq_distance"], [1.6, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(trace[0]["wk_distance"], [0.0, 0.8, 0.0], atol=1e-12)
    np.testing.assert_allclose(trace[0]["wq_relative"], [1.6 / q_ref, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(trace[0]["wk_relative"], [0.0, 0.8 / k_ref, 0.0], atol=1e-12)
    for key in ("wq_distance", "wq_relative", "wk_distance", "wk_relative"):
        assert trace[1][key] == [0.0, 0.0, 0.0]
    for rec, model in zip(trace, [early, late]):
        mass, entropy = head_stats(model, samples)
        assert rec["mass"] == [mass[r, h] for r, h in [(1, 3), (1, 1), (0, 1)]]
        assert rec["entropy"] == [entropy[r, h] for r, h in [(1, 3), (1, 1), (0, 1)]]
    assert trace[0]["mass"] != trace[1]["mass"]  # the perturbed query moves the attention
    first = trace_heads([early, late], heads, samples, reference_index=0)
    assert first[1]["wq_distance"] == pytest.approx([1.6, 0.0, 0.0], abs=1e-12)


def test_trace_heads_rejects_bad_heads_and_mixed_specs():
    model = make_model(["mamba2", "full"])
    with pytest.raises(ValueError, match="heads"):
        trace_heads([model], [(0, 0)], needle_samples())
    with pytest.raises(ValueError, match="heads"):
        trace_heads([model], [(1, 4)], needle_samples())
    with pytest.raises(ValueError, match="one LMSpec"):
        trace_heads([model, make_model(["swa-2", "full"])], [(1, 0)], needle_samples())
    assert math.isfinite(trace_heads([model], [(1, 0)], needle_samples())[0]["mass"][0])
