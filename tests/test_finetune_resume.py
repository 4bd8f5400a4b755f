"""Resumable fine-tuning runs (LoRA-α's train.save_every_steps): an interrupted run resumes bit for bit on one
process, a damaged newest checkpoint falls back to the previous one, a checkpoint of another run is refused, and
the fingerprint follows the base weights, the data and the run. Tiny DecoderLM base, real PEFT adapters."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_lora_setup

from lmrepro.config import load_config
from lmrepro.lora.alpha import alpha_for
from lmrepro.lora.checkpoints import ForeignRunError
from lmrepro.lora.finetune import finetune
from lmrepro.papers.lora_alpha.runs import RunSpec, run_checkpoints, train_run
from lmrepro.train import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = RunSpec(3e-3, alpha_for("2r", 4))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LMREPRO_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    return tiny_lora_setup(load_config(profile="smoke"), save_every_steps=2)


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def reference(setup):
    """The same run uninterrupted and without checkpoints: (trainable weights, rows)."""
    cfg, base, data = setup
    plain = tiny_lora_setup(load_config(profile="smoke"))[0]
    model, result = train_run(plain, base, data, LORA, eval_split="report", eval_every=3)
    return trained(model), result.rows


def assert_same_run(model, result, reference) -> None:
    weights, rows = reference
    assert trained(model).keys() == weights.keys()
    assert all(torch.equal(trained(model)[n], weights[n]) for n in weights)
    assert result.rows == rows and result.steps_done == 6 and result.final_eval is not None


@pytest.mark.parametrize("spec", [LORA, RunSpec(1e-3, None)], ids=["lora", "full"])
def test_an_interrupted_run_resumes_bit_for_bit(setup, spec):
    cfg, base, data = setup
    plain = tiny_lora_setup(load_config(profile="smoke"))[0]
    model, result = train_run(plain, base, data, spec, eval_split="report", eval_every=3)
    reference = trained(model), result.rows
    folder = run_checkpoints(cfg, base, data, spec, seed=cfg.lora_alpha.seed, steps=6, eval_split="report",
                             eval_every=3, log_every=1).folder
    _, stopped = train_run(cfg, base, data, spec, eval_split="report", eval_every=3, until_step=5)
    assert stopped.steps_done == 5 and stopped.final_eval is None and stopped.resumed_from is None
    assert [ckpt.step_of(f) for f in ckpt.list_checkpoints(folder)] == [4, 5]  # every 2 steps and at the stop
    model, result = train_run(cfg, base, data, spec, eval_split="report", eval_every=3)
    assert_same_run(model, result, reference)
    assert result.resumed_from == 5
    assert [ckpt.step_of(f) for f in ckpt.list_checkpoints(folder)] == [5, 6]  # the newest two
    # A finished run found again: nothing trained, the same result.
    model, again = train_run(cfg, base, data, spec, eval_split="report", eval_every=3)
    assert_same_run(model, again, reference)
    assert again.resumed_from == 6


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(setup, reference):
    cfg, base, data = setup
    train_run(cfg, base, data, LORA, eval_split="report", eval_every=3, until_step=5)
    folder = run_checkpoints(cfg, base, data, LORA, seed=cfg.lora_alpha.seed, steps=6, eval_split="report",
                             eval_every=3, log_every=1).folder
    newest = ckpt.list_checkpoints(folder)[-1]
    (newest / ckpt.TRAINABLE).write_bytes(b"\0" * 64)
    model, result = train_run(cfg, base, data, LORA, eval_split="report", eval_every=3)
    assert_same_run(model, result, reference)
    assert result.resumed_from == 4 and (folder / "step-0000005.damaged").is_dir()  # kept, never deleted


def test_a_checkpoint_of_another_run_is_refused(setup):
    cfg, base, data = setup
    other = RunSpec(1e-2, alpha_for("2r", 4))
    train_run(cfg, base, data, other, eval_split="report", eval_every=3, until_step=2)
    mine, theirs = (run_checkpoints(cfg, base, data, s, seed=cfg.lora_alpha.seed, steps=6, eval_split="report",
                                    eval_every=3, log_every=1).folder for s in (LORA, other))
    assert mine != theirs
    shutil.copytree(theirs, mine)
    with pytest.raises(ForeignRunError, match="checkpoint of fine-tuning run .* copied or moved here"):
        train_run(cfg, base, data, LORA, eval_split="report", eval_every=3)


def test_the_fingerprint_follows_base_data_and_run(setup):
    cfg, base, data = setup
    key = dict(seed=0, steps=6, eval_split=None, eval_every=None, log_every=1)
    first = run_checkpoints(cfg, base, data, LORA, **key).fingerprint
    assert run_checkpoints(cfg, base, data, LORA, **key).fingerprint == first
    moved = type(base)(base.spec)
    moved.load_state_dict(base.state_dict())
    with torch.no_grad():
        moved.embed_tokens.weight[0, 0] += 1e-3
    other_data = type(data)(data.name, {k: v.flip(0) for k, v in data.train.items()}, data.select, data.report, [])
    for changed in (run_checkpoints(cfg, moved, data, LORA, **key), run_checkpoints(cfg, base, other_data, LORA, **key),
                    run_checkpoints(cfg, base, data, RunSpec(3e-3, alpha_for("2r", 8)), **key),
                    run_checkpoints(cfg, base, data, LORA, **{**key, "seed": 1})):
        assert changed.fingerprint != first


def test_checkpoints_and_callbacks_do_not_mix(setup, tmp_path):
    from lmrepro.lora.checkpoints import FinetuneCheckpoints

    cfg, base, data = setup
    with pytest.raises(ValueError, match="cannot resume callbacks' own state"):
        finetune(base, lambda m: torch.optim.AdamW(m.parameters()), data.train, 2, batch_size=4,
                 callbacks=[object()], checkpoints=FinetuneCheckpoints(tmp_path / "run", 1, "abc"))
