"""Trainer on one process: exact resume, fingerprinted checkpoints, accumulation, loss normalization,
and checkpoints that are safe to load. Tiny model (hidden 32, 2 layers), 16-token sequences."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from lmrepro.data import ChunkSampler, ShardedTokens
from lmrepro.models import DecoderLM
from lmrepro.ops.dispatch import force_backend
from lmrepro.train import Trainer, build_optimizer, load_model, save_model
from lmrepro.train import checkpoint as ckpt

# 12 steps of 4 × 16 tokens; eval every 4 steps; budgets crossed at steps 2, 5 and 11.
BUDGETS = [128, 320, 704]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: see conftest.one_thread


@pytest.fixture(scope="module")
def cfg(make_train_config):
    return make_train_config(eval_every_steps=4, eval_windows=2, checkpoint_tokens=BUDGETS, keep_checkpoints=2)


@pytest.fixture(scope="module")
def spec(make_spec):
    return make_spec()


def trainer(spec, cfg, token_dirs, root: Path, out="out", ckpt_dir="ckpt", **kw) -> Trainer:
    train, val = token_dirs
    return Trainer(spec, cfg, train, root / out, root / ckpt_dir, val_dir=val, log_path=root / out / "log.csv",
                   progress=False, **kw)


@pytest.fixture(scope="module")
def reference(spec, cfg, token_dirs, tmp_path_factory):
    """One uninterrupted run: (TrainResult, its out_dir)."""
    root = tmp_path_factory.mktemp("reference")
    result = trainer(spec, cfg, token_dirs, root).fit()
    assert result.completed and result.resumed_from_step is None and result.step == cfg.max_steps
    return result, root / "out"


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def assert_identical(a_dir: Path, b_dir: Path) -> None:
    a, b = load_model(a_dir).state_dict(), load_model(b_dir).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs (max {(a[name] - b[name]).abs().max().item():.3g})"


def assert_close(a: DecoderLM, b: DecoderLM, rel: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        scale = sa[name].abs().max().item()
        diff = (sa[name] - sb[name]).abs().max().item()
        assert diff <= rel * scale, f"{name}: max diff {diff:.3g} > {rel} × scale {scale:.3g}"


def step_names(folder: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(folder)]


# -- (a) resume exactness ---------------------------------------------------------------------------

def test_reference_run_outputs(reference, cfg):
    result, out = reference
    assert [r["step"] for r in result.rows] == list(range(1, cfg.max_steps + 1))
    assert [r["step"] for r in result.rows if "val_loss" in r] == [4, 8, 12]
    assert result.rows[-1]["loss"] < result.rows[0]["loss"]  # it learns something
    assert sorted(p.name for p in out.iterdir()) == ["budget-128", "budget-320", "budget-704", "final", "log.csv"]
    for b in BUDGETS:
        meta = json.loads((out / f"budget-{b}" / "spec.json").read_text())
        assert meta["budget_tokens"] == b and b <= meta["tokens_seen"] < b + cfg.tokens_per_step
    with (out / "log.csv").open() as fh:
        logged = list(csv.DictReader(fh))
    assert [float(r["loss"]) for r in logged] == [r["loss"] for r in result.rows]


@pytest.mark.parametrize("stop", [5, 7, 11])  # 5: a save step; 7 and 11: saved because the run stops there
def test_resume_is_bit_identical(reference, spec, cfg, token_dirs, tmp_path, stop):
    ref, ref_out = reference
    t = trainer(spec, cfg, token_dirs, tmp_path)
    first = t.fit(until_step=stop)
    assert not first.completed and first.step == stop
    assert not (tmp_path / "out" / "final").exists()
    fp_dir = t.ckpt_dir
    assert step_names(fp_dir)[-1] == f"step-{stop:07d}"
    assert without_time(first.rows) == without_time(ref.rows[:stop])

    # A new Trainer object (as after a preemption) on the same folders.
    second = trainer(spec, cfg, token_dirs, tmp_path).fit()
    assert second.completed and second.resumed_from_step == stop
    assert without_time(second.rows) == without_time(ref.rows)
    assert_identical(ref_out / "final", tmp_path / "out" / "final")
    # Budget snapshots written before the interruption are published too, identical to the reference.
    for b in BUDGETS:
        assert_identical(ref_out / f"budget-{b}", tmp_path / "out" / f"budget-{b}")
    saves = sorted({5, 10, 12, stop})  # every save_every_steps, the stop and the end; keep_checkpoints=2
    assert step_names(fp_dir) == [f"step-{s:07d}" for s in saves[-2:]]
    assert not list(fp_dir.glob("*.tmp"))

    # Running a finished run again trains nothing and republishes the same weights; its provenance still
    # names the op backends of the steps run earlier (the checkpoint carries them, not this process).
    again = trainer(spec, cfg, token_dirs, tmp_path, provenance_path=tmp_path / "prov.json").fit()
    assert json.loads((tmp_path / "prov.json").read_text())["op_backends"] == {"attention": "sdpa"}
    assert again.resumed_from_step == cfg.max_steps and without_time(again.rows) == without_time(ref.rows)
    assert_identical(ref_out / "final", tmp_path / "out" / "final")
    # Its log has the reference's columns in the reference's order (rows come back from JSON state).
    header = (tmp_path / "out" / "log.csv").read_text().splitlines()[0]
    assert header == (ref_out / "log.csv").read_text().splitlines()[0]
    assert header.startswith("step,tokens,loss,lr,grad_norm,elapsed_s")


def test_provenance_of_a_resumed_run_names_the_backends_of_both_parts(spec, cfg, token_dirs, tmp_path):
    with force_backend({"attention": "naive"}):
        trainer(spec, cfg, token_dirs, tmp_path).fit(until_step=5)
    trainer(spec, cfg, token_dirs, tmp_path, provenance_path=tmp_path / "prov.json").fit()
    assert json.loads((tmp_path / "prov.json").read_text())["op_backends"] == {"attention": "naive,sdpa"}


def test_resume_from_an_older_checkpoint_after_a_crash(reference, spec, cfg, token_dirs, tmp_path):
    """Killed after step 8 before saving: the last checkpoint is step 5, steps 6–8 are redone identically."""
    ref, ref_out = reference
    t = trainer(spec, cfg, token_dirs, tmp_path)
    t.fit(until_step=8)
    shutil.rmtree(t.ckpt_dir / "step-0000008")
    result = trainer(spec, cfg, token_dirs, tmp_path).fit()
    assert result.resumed_from_step == 5
    assert without_time(result.rows) == without_time(ref.rows)
    assert_identical(ref_out / "final", tmp_path / "out" / "final")


def test_half_written_checkpoints_are_ignored(reference, spec, cfg, token_dirs, tmp_path):
    ref, ref_out = reference
    t = trainer(spec, cfg, token_dirs, tmp_path)
    t.fit(until_step=7)
    # A crash while saving step 10 leaves step-0000010.tmp (complete-looking state.json, broken weights);
    # a folder without state.json and a stray name must not be taken for checkpoints either.
    tmp = t.ckpt_dir / "step-0000010.tmp"
    shutil.copytree(t.ckpt_dir / "step-0000007", tmp)
    (tmp / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp / "state.json").write_text(json.dumps({"step": 10, "rows": [], "fingerprint": t.fingerprint}))
    (t.ckpt_dir / "step-0000011").mkdir()
    for stray in ("step-latest", "step-0000009.old"):
        shutil.copytree(t.ckpt_dir / "step-0000007", t.ckpt_dir / stray)
    assert step_names(t.ckpt_dir) == ["step-0000005", "step-0000007"]

    result = trainer(spec, cfg, token_dirs, tmp_path).fit()
    assert result.resumed_from_step == 7
    assert without_time(result.rows) == without_time(ref.rows)
    assert_identical(ref_out / "final", tmp_path / "out" / "final")


def test_changed_config_does_not_resume_and_keeps_old_checkpoints(spec, cfg, token_dirs, tmp_path):
    old = trainer(spec, cfg, token_dirs, tmp_path)
    old.fit(until_step=5)
    saved = {p.name: p.read_bytes() for p in (old.ckpt_dir / "step-0000005").iterdir()}

    changed = trainer(spec, replace(cfg, lr=1e-3), token_dirs, tmp_path)
    assert changed.fingerprint != old.fingerprint
    result = changed.fit(until_step=3)
    assert result.resumed_from_step is None and result.rows[0]["step"] == 1
    assert result.rows[0]["lr"] == pytest.approx(1e-3 * 1 / 2)  # its own schedule: warmup 2 steps
    # The old run's checkpoint is untouched and still resumable by the old config.
    assert {p.name: p.read_bytes() for p in (old.ckpt_dir / "step-0000005").iterdir()} == saved
    runs = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name != ".lock")  # .lock: the run lock
    assert runs == sorted([old.fingerprint, changed.fingerprint])
    assert trainer(spec, cfg, token_dirs, tmp_path).fit(until_step=6).resumed_from_step == 5

    # Other model, other data: other fingerprints too.
    train, val = token_dirs
    assert trainer(replace(spec, hidden_size=16), cfg, token_dirs, tmp_path).fingerprint != old.fingerprint
    assert Trainer(spec, cfg, val, tmp_path / "o", tmp_path / "ckpt", progress=False).fingerprint != old.fingerprint


def test_bookkeeping_changes_still_resume(reference, spec, cfg, token_dirs, tmp_path):
    """Checkpoint/log/eval periods do not change the weights, so they keep the fingerprint."""
    ref, ref_out = reference
    trainer(spec, cfg, token_dirs, tmp_path).fit(until_step=5)
    edited = replace(cfg, save_every_steps=3, log_every_steps=2, keep_checkpoints=3, eval_every_steps=6)
    t = trainer(spec, edited, token_dirs, tmp_path)
    result = t.fit()
    assert result.resumed_from_step == 5
    assert_identical(ref_out / "final", tmp_path / "out" / "final")
    assert [r["step"] for r in result.rows] == [1, 2, 3, 4, 5, 6, 8, 10, 12]
    assert step_names(t.ckpt_dir) == ["step-0000006", "step-0000009", "step-0000012"]


# -- (b) gradient accumulation and loss normalization -------------------------------------------------------

class GradRecordingTrainer(Trainer):
    """Records the accumulated gradients the optimizer is about to use (before clipping)."""

    grads: list[dict[str, torch.Tensor]]

    def _clip(self, model):
        self.grads = getattr(self, "grads", [])
        self.grads.append({n: p.grad.detach().clone() for n, p in
                           self.accelerator.unwrap_model(model).named_parameters()})
        return super()._clip(model)


@pytest.mark.parametrize("micro", [2, 1])
def test_accumulation_matches_one_big_micro_batch(spec, make_train_config, token_dirs, tmp_path, micro):
    """batch 4 as 1 micro-batch of 4 vs 4/micro micro-batches: same gradients, losses and weights.

    The gradients are the real check (AdamW and clipping hide a wrong gradient scale from the weights);
    weights get a looser bound because AdamW divides by sqrt(v) + eps, which amplifies the rounding
    noise of near-zero gradient entries (~3e-5 of the weight scale after 5 steps here).
    """
    train, val = token_dirs
    runs, grads = {}, {}
    for m in (4, micro):
        cfg = make_train_config(batch_size=4, micro_batch_size=m, max_tokens=5 * 4 * 16, save_every_steps=100)
        t = GradRecordingTrainer(spec, cfg, train, tmp_path / f"out{m}", tmp_path / f"ckpt{m}", progress=False)
        runs[m], grads[m] = t.fit(), t.grads
    for step, (ga, gb) in enumerate(zip(grads[4], grads[micro]), start=1):
        for name in ga:
            scale = ga[name].abs().max().item()
            assert torch.allclose(ga[name], gb[name], rtol=0, atol=1e-5 * scale), (step, name)
    for a, b in zip(runs[4].rows, runs[micro].rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["lr"] == a["lr"]
    assert_close(load_model(runs[4].final_dir), load_model(runs[micro].final_dir), rel=3e-4)


@pytest.mark.parametrize("micro, grad_clip", [(8, None), (4, 1.0), (1, None)])
def test_step_gradient_is_gradient_of_mean_token_loss(spec, make_train_config, token_dirs, tmp_path, micro, grad_clip):
    cfg = make_train_config(batch_size=8, micro_batch_size=micro, max_tokens=8 * 16, grad_clip=grad_clip)
    train, _ = token_dirs
    t = GradRecordingTrainer(spec, cfg, train, tmp_path / "out", tmp_path / "ckpt", progress=False)
    result = t.fit()

    # Reference: the same initial weights, mean token cross-entropy over the whole global batch.
    set_seed(cfg.seed)
    model = DecoderLM(spec)
    batch = ChunkSampler(ShardedTokens(train), cfg.seq_len, cfg.seed).batch(0, cfg.batch_size)
    loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    assert result.rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert result.rows[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    (grads,) = t.grads
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        assert torch.allclose(grads[name], p.grad, rtol=0, atol=1e-5 * scale), name


# -- (e) checkpoint safety ---------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["model.safetensors", "spec.json"])
def test_load_model_names_the_missing_file(spec, tmp_path, missing):
    folder = save_model(DecoderLM(spec), tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="model folder"):
        load_model(tmp_path / "does-not-exist")


@pytest.mark.parametrize("text", ["{not json", '{"budget_tokens": 5}', '{"spec": {"hidden_size": 32}}'])
def test_load_model_rejects_a_broken_spec_json(spec, tmp_path, text):
    folder = save_model(DecoderLM(spec), tmp_path / "m")
    (folder / "spec.json").write_text(text)
    with pytest.raises(ValueError, match="spec.json"):
        load_model(folder)


def test_load_model_rejects_weights_of_another_spec(spec, tmp_path):
    folder = save_model(DecoderLM(spec), tmp_path / "m")
    other = save_model(DecoderLM(replace(spec, num_layers=1, layers=spec.layers[:1])), tmp_path / "o")
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ckpt.DamagedFileError, match="does not match the SHA-256"):
        load_model(folder)
    # A folder written before hashes existed: the shape check still refuses the foreign weights.
    meta = json.loads((folder / "spec.json").read_text())
    del meta["sha256"]
    (folder / "spec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match spec"):
        load_model(folder)


@pytest.mark.parametrize("tie", [False, True])
def test_model_folder_round_trip(make_spec, tmp_path, tie):
    model = DecoderLM(make_spec(tie_embeddings=tie))
    loaded = load_model(save_model(model, tmp_path / "m", extra={"note": 1}))
    assert loaded.spec == model.spec
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    if tie:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight


def _touch(path):  # what an attacker's pickle would run on load
    Path(path).write_text("unpickled")


class Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


@pytest.mark.parametrize("poisoned", ["optimizer.pt", "rng.pt"])
def test_checkpoint_refuses_pickled_objects(spec, make_train_config, token_dirs, tmp_path, poisoned):
    cfg = make_train_config()
    t = trainer(spec, cfg, token_dirs, tmp_path)
    t.fit(until_step=2)
    (folder,) = ckpt.list_checkpoints(t.ckpt_dir)
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, folder / poisoned)

    model = DecoderLM(spec)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    # The replaced file no longer matches its hash: refused before it is unpickled.
    with pytest.raises(ckpt.DamagedFileError, match=poisoned):
        ckpt.load_checkpoint(folder, model, opt, sched)
    # Without the hashes (an older checkpoint) the tensors-only loader still refuses the payload.
    state = json.loads((folder / "state.json").read_text())
    del state["sha256"]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        ckpt.load_checkpoint(folder, model, opt, sched)
    # The trainer's resume path goes through the same loader: the checkpoint is set aside as damaged (kept)
    # and training starts afresh instead of running the payload.
    result = trainer(spec, cfg, token_dirs, tmp_path).fit()
    assert result.resumed_from_step is None and not marker.exists()
    assert (folder.parent / f"{folder.name}.damaged" / poisoned).is_file()


def test_checkpoint_round_trip_restores_optimizer_and_scheduler(spec, make_train_config, token_dirs, tmp_path):
    cfg = make_train_config()
    t = trainer(spec, cfg, token_dirs, tmp_path)
    t.fit(until_step=3)
    (folder,) = ckpt.list_checkpoints(t.ckpt_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.pt", "rng.pt",
                                                        "scheduler.json", "spec.json", "state.json"]
    model = DecoderLM(spec)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = ckpt.load_checkpoint(folder, model, opt, sched)
    assert state["step"] == 3 and state["fingerprint"] == t.fingerprint and len(state["rows"]) == 3
    assert sched.last_epoch == 3
    assert all(float(s["step"]) == 3 for s in opt.state_dict()["state"].values())


# -- configuration errors --------------------------------------------------------------------------

def test_trainer_rejects_inconsistent_setups(spec, make_spec, make_train_config, token_dirs, tmp_path):
    train, _ = token_dirs
    with pytest.raises(ValueError, match="vocab"):
        Trainer(make_spec(vocab_size=100), make_train_config(), train, tmp_path / "o", tmp_path / "c", progress=False)
    bad = replace(make_train_config(), micro_batch_size=3)
    with pytest.raises(ValueError, match="micro_batch_size"):
        Trainer(spec, bad, train, tmp_path / "o", tmp_path / "c", progress=False)


@pytest.mark.parametrize("precision, device, want", [
    ("auto", "cpu", None), ("auto", "cuda", torch.bfloat16), ("fp32", "cpu", None), ("fp32", "cuda", None),
    ("bf16", "cpu", torch.bfloat16), ("bf16", "cuda", torch.bfloat16),
])
def test_autocast_dtype_table(precision, device, want):
    """The shared rule (lmrepro.train.device): fine-tuning autocasts bf16 anywhere; the Trainer (strict)
    refuses bf16 without CUDA and otherwise agrees."""
    from lmrepro.train.device import autocast_dtype, default_device

    assert autocast_dtype(precision, device) is want
    if precision == "bf16" and device == "cpu":
        with pytest.raises(ValueError, match="needs a CUDA device"):
            autocast_dtype(precision, device, strict=True)
    else:
        assert autocast_dtype(precision, device, strict=True) is want
    assert autocast_dtype(precision) is autocast_dtype(precision, default_device())
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_progress_lines_and_live_csv_while_training(spec, cfg, token_dirs, tmp_path, caplog):
    """A text line every `progress_every_steps` (tokens/s, loss, ETA) in the stage's log, and the per-step CSV
    written as it goes: a run stopped at step 6 of 12 has its first 6 rows on disk."""
    import logging

    t = trainer(spec, replace(cfg, progress_every_steps=3), token_dirs, tmp_path)
    with caplog.at_level(logging.INFO, logger="lmrepro.train.trainer"):
        t.fit(until_step=6)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["3/12", "6/12"]
    assert all("tok/s" in ln and "ETA" in ln and "loss" in ln for ln in lines)
    with open(tmp_path / "out" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 7))
