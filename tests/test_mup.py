"""μP (``LMSpec.mup_base_width``): the coordinate check that defines it, equality with the standard
parametrization at the base width, its attention scale against a dense softmax, per-block learning rates
of a variable-width model, resume, and the ><former paper profile that uses it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from lmrepro.config import load_config
from lmrepro.models import DecoderLM, LayerSpec, LMSpec
from lmrepro.models.hf import LMReproConfig
from lmrepro.papers.xformer.runs import run_spec
from lmrepro.train import Trainer, build_optimizer, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def adam_steps(model: DecoderLM, ids: torch.Tensor, cfg, steps: int = 3) -> None:
    opt = build_optimizer(model, cfg)
    for _ in range(steps):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def feature_change(make_spec, make_train_config, width: int, base: int | None) -> float:
    """RMS change of the last block's output after 3 Adam steps (lr 1e-2) on one random batch."""
    spec = make_spec(hidden_size=width, intermediate_size=2 * width, num_heads=4, num_kv_heads=4,
                     mup_base_width=base)
    torch.manual_seed(0)
    model = DecoderLM(spec)
    ids = torch.randint(0, spec.vocab_size, (8, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.hidden_states(ids[:, :-1])[-1]
    adam_steps(model, ids, make_train_config(lr=1e-2, weight_decay=0.0))
    with torch.no_grad():
        after = model.hidden_states(ids[:, :-1])[-1]
    return (after - before).pow(2).mean().sqrt().item()


def test_coordinate_check_features_move_the_same_at_every_width_under_mup_only(make_spec, make_train_config):
    widths = (64, 256, 1024)
    mup = [feature_change(make_spec, make_train_config, w, 32) for w in widths]
    sp = [feature_change(make_spec, make_train_config, w, None) for w in widths]
    # μP: the update's effect on the features is width-independent (measured 0.032 / 0.029 / 0.029); the
    # standard parametrization with one Adam lr blows up with width (0.07 / 2.9 / 54).
    assert max(mup) / min(mup) < 1.25, mup
    assert sp[-1] / sp[0] > 20, sp


def test_mup_at_its_base_width_is_the_standard_model(make_spec, make_train_config):
    sp, mup = make_spec(), make_spec(mup_base_width=32)  # hidden 32
    set_seed(0)
    a = DecoderLM(sp)
    set_seed(0)
    b = DecoderLM(mup)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert set(b.lr_multipliers().values()) == {1.0}
    ids = torch.randint(0, sp.vocab_size, (4, 17), generator=torch.Generator().manual_seed(2))
    cfg = make_train_config()
    adam_steps(a, ids, cfg)
    adam_steps(b, ids, cfg)
    assert torch.equal(a(ids), b(ids))


def test_mup_attention_scale_is_one_over_head_dim_against_a_dense_softmax(make_spec):
    # hidden 64, 2 heads: d = 32; base 16: d0 = 8, so scale = sqrt(8) / 32 (the standard one would be 1/sqrt(32)).
    spec = make_spec(hidden_size=64, mup_base_width=16, layers=(LayerSpec(rope=False),) * 2)
    assert spec.attention_scale() == pytest.approx(math.sqrt(8) / 32)
    assert make_spec(hidden_size=64).attention_scale() is None
    torch.manual_seed(0)
    mixer = DecoderLM(spec).layers[0].mixer
    x = torch.randn(2, 9, 64)
    b, t, h, d = 2, 9, 2, 32
    q, k, v = (proj(x).view(b, t, h, d).transpose(1, 2) for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    scores = (q @ k.transpose(-1, -2)) * (math.sqrt(8) / 32)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    want = mixer.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h * d))
    torch.testing.assert_close(mixer(x, torch.arange(t)), want, rtol=1e-5, atol=1e-6)


def test_mup_logit_multiplier(make_spec):
    sp, mup = make_spec(hidden_size=64), make_spec(hidden_size=64, mup_base_width=16)
    a, b = DecoderLM(sp), DecoderLM(mup)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(b.readout(x), a.readout(x) * 0.25, rtol=0, atol=0)


def test_variable_width_mup_learning_rates_and_init(make_spec, make_train_config):
    # h 64, blocks 64 / 32 / 64 (learned projections into blocks 1 and 2), base 32.
    spec = make_spec(hidden_size=64, num_layers=3, widths=(64, 32, 64), expansion="learned", mup_base_width=32,
                     intermediate_size=64)
    model = DecoderLM(spec)
    factors = model.lr_multipliers()
    for name, p in model.named_parameters():
        if p.dim() < 2 or name in ("embed_tokens.weight", "lm_head.weight"):
            want = 1.0
        elif name.startswith("layers."):
            want = 32 / spec.widths[int(name.split(".")[1])]
        else:  # width_projections.<i>: fan-in = width of block i−1
            want = 32 / spec.widths[int(name.split(".")[1]) - 1]
        assert factors[name] == want, name
    assert factors["layers.1.mlp.up_proj.weight"] == 1.0 and factors["width_projections.1.weight"] == 0.5
    # The optimizer has one group per (decay, factor), with lr = base lr · factor; the first is the base lr.
    cfg = make_train_config(lr=1e-3)
    opt = build_optimizer(model, cfg)
    lrs = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert lrs == [(1e-3, cfg.weight_decay), (5e-4, cfg.weight_decay), (1e-3, 0.0)]
    group_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(group_of[id(p)] == 1e-3 * factors[n] for n, p in model.named_parameters())
    # Init: block ℓ's matrices have std init_std·sqrt(h0 / w_ℓ) (block 1: 0.02, blocks 0 and 2: 0.02/√2).
    stds = [model.layers[i].mlp.up_proj.weight.std().item() for i in range(3)]
    assert stds == pytest.approx([0.02 / math.sqrt(2), 0.02, 0.02 / math.sqrt(2)], rel=0.05)


def test_standard_models_keep_their_optimizer_groups_files_and_fingerprints(make_spec, make_train_config):
    spec = make_spec()
    model = DecoderLM(spec)
    opt = build_optimizer(model, make_train_config())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in decay],
                                                                         [id(p) for p in no_decay]]
    # spec.json / config.json / run fingerprints name mup_base_width only when it is set.
    assert "mup_base_width" not in spec.to_dict()
    mup = make_spec(mup_base_width=16)
    assert mup.to_dict()["mup_base_width"] == 16 and LMSpec.from_dict(mup.to_dict()) == mup
    assert LMReproConfig.from_spec(mup).to_spec() == mup and LMSpec.from_dict(spec.to_dict()) == spec


def test_mup_needs_attention_layers_and_a_width(make_spec):
    with pytest.raises(ValueError, match="mup_base_width: μP is defined for attention layers only"):
        make_spec(mup_base_width=16, layers=(LayerSpec(), LayerSpec(mixer="gdn")))
    for bad in (0, 1, True, 16.0):
        with pytest.raises(ValueError, match="mup_base_width: must be None"):
            make_spec(mup_base_width=bad)


def test_mup_run_resumes_bit_identically(make_spec, make_train_config, token_dirs, tmp_path):
    spec, cfg = make_spec(hidden_size=64, mup_base_width=16), make_train_config()
    train, _ = token_dirs

    def run(root, until=None):
        return Trainer(spec, cfg, train, root / "out", root / "ckpt", progress=False).fit(until_step=until)

    ref = run(tmp_path / "ref")
    run(tmp_path / "cut", until=5)
    resumed = run(tmp_path / "cut")
    assert resumed.resumed_from_step == 5
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in ref.rows]
    assert max(r["lr"] for r in ref.rows) == pytest.approx(cfg.lr)  # the log's lr is the base lr (hidden: lr/4)
    a, b = load_model(tmp_path / "ref" / "out" / "final"), load_model(tmp_path / "cut" / "out" / "final")
    assert a.spec == spec and all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_xformer_paper_profile_uses_mup_with_the_old_ladder_at_its_ends():
    cfg = load_config(profile="paper")
    x = cfg.xformer
    assert x.mup_base_width == 256 and all(s.lr is None for s in x.sizes.values())
    for size, hidden_lr in (("200M", 1e-3), ("2B", 4e-4)):
        spec = run_spec(cfg, "baseline", size)
        assert spec.mup_base_width == 256
        with torch.device("meta"):
            model = DecoderLM(spec)
        factor = model.lr_multipliers()["layers.0.mlp.down_proj.weight"]
        assert x.lr_of(size) * factor == pytest.approx(hidden_lr)
    assert load_config(profile="laptop").xformer.mup_base_width is None
