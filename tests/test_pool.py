"""lmrepro.pool: independent runs in worker processes give exactly the serial results, in order; bad worker
counts and failing jobs are reported. The real training paths (LoRA sweep and methods on a tiny Llama) are
compared serial against parallel in test_lora_alpha_pipeline.py; real Trainer runs below."""

from __future__ import annotations

import pytest
import torch

from lmrepro.pool import ENV, run_jobs, worker_count


def train_tiny(scale: float, seed: int) -> list[float]:
    """A few AdamW steps of a small MLP on seeded data: losses depend on every float operation."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(256, 32) * scale
    y = x.sum(-1, keepdim=True).sin()
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def fit_tiny(spec, token_dirs, root, cfg) -> list[dict]:
    """One run of the real Trainer (its own folder); its log rows without wall time."""
    from lmrepro.train import Trainer

    train, val = token_dirs
    name = f"seed{cfg.seed}"
    result = Trainer(spec, cfg, train, root / name / "out", root / name / "ckpt", val_dir=val,
                     progress=False).fit()
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in result.rows]


def fails_on_two(seed: int) -> int:
    if seed == 2:
        raise ValueError("job two is bad")
    return seed


def test_parallel_equals_serial_in_job_order():
    jobs = [0, 1, 2, 3, 4]
    serial = run_jobs(train_tiny, jobs, (0.5,), workers=1)
    seen = []
    parallel = run_jobs(train_tiny, jobs, (0.5,), workers=2, on_result=lambda i, r: seen.append(i))
    assert parallel == serial  # exact: every run computes with one thread either way
    assert sorted(seen) == jobs and serial[0] != serial[1]


def test_trainer_runs_in_workers_equal_serial_runs(make_spec, make_train_config, token_dirs, tmp_path):
    """The project's Trainer (the pretraining path) runs of several seeds, serial and in two workers."""
    configs = [make_train_config(seed=seed, eval_every_steps=4, eval_windows=2) for seed in (0, 1, 2)]
    serial = run_jobs(fit_tiny, configs, (make_spec(), token_dirs, tmp_path / "serial"), workers=1)
    parallel = run_jobs(fit_tiny, configs, (make_spec(), token_dirs, tmp_path / "parallel"), workers=2)
    assert parallel == serial and serial[0] != serial[1]
    assert all(len(rows) == configs[0].max_steps for rows in serial)


def test_serial_restores_the_thread_count():
    before = torch.get_num_threads()
    run_jobs(train_tiny, [0], (1.0,), workers=1, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_is_named(workers):
    with pytest.raises(RuntimeError, match="job 2 .*job two is bad"):
        run_jobs(fails_on_two, [0, 1, 2, 3], workers=workers)


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "3")
    assert worker_count(10) == 3 and worker_count(2) == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            worker_count(4)
    monkeypatch.delenv(ENV)
    assert 1 <= worker_count(4) <= 4
