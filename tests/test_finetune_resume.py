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
    # A finished run keeps one slim checkpoint: its weights and rows, no optimizer moments.
    [final] = ckpt.list_checkpoints(folder)
    assert ckpt.step_of(final) == 6 and torch.load(final / "optimizer.pt", weights_only=True)["state"] == {}
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


def _plain_lora(base):
    """A fresh LoRA (r = 4, α = 2r) copy of ``base`` on its attention projections."""
    import copy

    from lmrepro.lora import apply_lora

    return apply_lora(copy.deepcopy(base), 4, alpha_for("2r", 4), ["q_proj", "v_proj"], seed=0)


def test_a_checkpoint_that_fails_to_load_leaves_the_run_as_it_was(setup, tmp_path):
    """A checkpoint whose files are intact but do not fit (here: an optimizer with another group layout, as after a
    code change) is set aside, and the run starts afresh exactly as a run that never saw it — not on the weights or
    optimizer state the failed load left behind."""
    from lmrepro.lora.checkpoints import FinetuneCheckpoints
    from lmrepro.lora import loraplus_optimizer

    _, base, data = setup
    one_group = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)  # noqa: E731
    two_groups = lambda m: loraplus_optimizer(m, 3e-3, 4.0)  # noqa: E731
    where = FinetuneCheckpoints(tmp_path / "run", 1, "same-run")
    finetune(_plain_lora(base), one_group, data.train, 6, batch_size=4, checkpoints=where, until_step=3)
    fresh = finetune(model := _plain_lora(base), two_groups, data.train, 6, batch_size=4)
    again = finetune(resumed := _plain_lora(base), two_groups, data.train, 6, batch_size=4, checkpoints=where)
    assert again.resumed_from is None and again.rows == fresh.rows
    assert all(torch.equal(a, b) for a, b in zip(trained(model).values(), trained(resumed).values()))
    assert sorted(p.name for p in where.folder.iterdir() if p.name.endswith(".damaged")) == [
        "step-0000002.damaged", "step-0000003.damaged"]


def test_ctrl_c_saves_at_the_step_boundary_and_a_second_run_is_refused_while_one_holds_the_folder(setup, tmp_path):
    import os
    import signal

    from lmrepro.lora.checkpoints import FinetuneCheckpoints
    from lmrepro.train.guard import RunInterrupted, RunLock, RunLockedError

    _, base, data = setup
    adam = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)  # noqa: E731
    where = FinetuneCheckpoints(tmp_path / "run", 100, "run")
    reference = finetune(model := _plain_lora(base), adam, data.train, 6, batch_size=4)

    def interrupt_at_step_2(m):  # an evaluation hook: Ctrl-C arrives in the middle of step 2's work
        os.kill(os.getpid(), signal.SIGINT)
        return {}

    with pytest.raises(RunInterrupted, match="fine-tuning stopped after step 2 of 6: interrupted"):
        finetune(_plain_lora(base), adam, data.train, 6, batch_size=4, checkpoints=where, eval_fn=interrupt_at_step_2,
                 eval_every=2)
    assert [ckpt.step_of(f) for f in ckpt.list_checkpoints(where.folder)] == [2]
    with RunLock(where.folder), pytest.raises(RunLockedError, match="another trainer holds this run"):
        finetune(_plain_lora(base), adam, data.train, 6, batch_size=4, checkpoints=where)
    resumed = finetune(again := _plain_lora(base), adam, data.train, 6, batch_size=4, checkpoints=where)
    assert resumed.resumed_from == 2 and [r["loss"] for r in resumed.rows] == [r["loss"] for r in reference.rows]
    assert all(torch.equal(a, b) for a, b in zip(trained(model).values(), trained(again).values()))
