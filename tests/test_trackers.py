"""Live metrics (train.trackers): the Trainer logs every logged row through accelerate's tracker API to DVCLive,
a resumed run's live curve has each step once, and `dvc exp show` sees a running experiment's run. Real
DVCLive, real DVC (git + dvc repository), tiny model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lmrepro.config import ConfigError, TrainConfig
from lmrepro.config.schema_tools import build
from lmrepro.train import Trainer
from lmrepro.train import checkpoint as ckpt

from conftest import tool_env, write_token_dirs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cfg(make_train_config):
    # 12 steps, validation every 4, checkpoints every 5 (and where a run stops).
    return make_train_config(eval_every_steps=4, eval_windows=2, trackers=["dvclive"])


def trainer(spec, cfg, token_dirs, root: Path) -> Trainer:
    train, val = token_dirs
    return Trainer(spec, cfg, train, root / "out", root / "ckpt", val_dir=val, log_path=root / "log.csv",
                   progress=False, live_dir=root / "live")


def csv_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def tsv(live: Path, metric: str) -> list[tuple[int, float]]:
    with open(live / "plots" / "metrics" / f"{metric}.tsv") as fh:
        return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(fh, delimiter="\t")]


def assert_live_matches_csv(live: Path, log: Path) -> None:
    rows = csv_rows(log)
    assert tsv(live, "loss") == [(int(r["step"]), float(r["loss"])) for r in rows]
    assert tsv(live, "val_loss") == [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    latest = json.loads((live / "metrics.json").read_text())
    assert latest["step"] == int(rows[-1]["step"]) and latest["loss"] == float(rows[-1]["loss"])


def test_live_metrics_follow_the_run_and_a_resume_keeps_each_step_once(make_spec, cfg, token_dirs, tmp_path):
    spec = make_spec()
    first = trainer(spec, cfg, token_dirs, tmp_path)
    first.fit(until_step=8)  # stopped as a preemption would: checkpoints at 5 and 8
    live = tmp_path / "live"
    # While the run is unfinished the live folder already shows it: the latest step, every logged row so far.
    assert json.loads((live / "metrics.json").read_text())["step"] == 8
    assert_live_matches_csv(live, tmp_path / "log.csv")
    params = yaml.safe_load((live / "params.yaml").read_text())
    assert params["fingerprint"] == first.fingerprint and params["lr"] == cfg.lr

    # A crash that loses the newest checkpoint: the run resumes from step 5, and steps 6-8 are trained again.
    # The live curve must not hold them twice.
    for folder in ckpt.list_checkpoints(first.ckpt_dir):
        if ckpt.step_of(folder) == 8:
            shutil.rmtree(folder)
    result = trainer(spec, cfg, token_dirs, tmp_path).fit()
    assert result.resumed_from_step == 5 and result.completed
    assert [s for s, _ in tsv(live, "loss")] == list(range(1, 13))
    assert_live_matches_csv(live, tmp_path / "log.csv")


def test_no_trackers_no_live_folder(make_spec, make_train_config, token_dirs, tmp_path):
    trainer(make_spec(), make_train_config(), token_dirs, tmp_path).fit(until_step=2)
    assert not (tmp_path / "live").exists()


def test_tracker_mistakes_are_named_before_training(make_spec, make_train_config, token_dirs, tmp_path):
    base = {"seq_len": 16, "batch_size": 4, "micro_batch_size": 2, "max_tokens": 128, "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"train.trackers: 'dvc' is not allowed; choose one of \['dvclive'"):
        build(TrainConfig, {**base, "trackers": ["dvc"]}, "train")
    assert build(TrainConfig, {**base, "trackers": ["dvclive"]}, "train").trackers == ["dvclive"]
    train, _ = token_dirs
    absent = next(t for t in ("aim", "swanlab", "trackio", "clearml") if not _installed(t))
    with pytest.raises(ValueError, match=rf"trackers \['{absent}'\]: not installed here \(pip install {absent}\)"):
        Trainer(make_spec(), make_train_config(trackers=[absent]), train, tmp_path / "o", tmp_path / "c",
                live_dir=tmp_path / "live")
    with pytest.raises(ValueError, match=r"need the run's live folder"):
        Trainer(make_spec(), make_train_config(trackers=["dvclive"]), train, tmp_path / "o", tmp_path / "c")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# A stage that trains a tiny run to step 4, logs, and waits for the test's signal before it finishes: what a long
# pretraining stage looks like to `dvc exp show` while it runs.
STAGE = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import tiny_spec, tiny_train_config
    from lmrepro.train import Trainer

    cfg = tiny_train_config(max_tokens=4 * 4 * 16, trackers=["dvclive"], save_every_steps=100)
    Trainer(tiny_spec(), cfg, {tokens!r}, "out", {ckpt!r}, log_path="train.csv", progress=False,
            live_dir="live/toy/run-a").fit()
    while not Path({go!r}).exists():
        time.sleep(0.2)
    Path("done.txt").write_text("done")
''')


def test_dvc_exp_show_sees_a_running_stage(tmp_path):
    """`dvc exp run --temp` (how the mid and paper profiles run) of a stage that trains: while it runs, `dvc exp
    show` lists its run's latest live metrics — through this project's own dvc.yaml declaration and .dvcignore."""
    repo, go = tmp_path / "repo", tmp_path / "go"
    tokens, _ = write_token_dirs(tmp_path / "tokens")
    repo.mkdir()
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["metrics"]
    assert "live" in declared
    (repo / "train.py").write_text(STAGE.format(tests=str(ROOT / "tests"), tokens=str(tokens),
                                                ckpt=str(tmp_path / "ckpt"), go=str(go)))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({
        "stages": {"train": {"cmd": f"{sys.executable} train.py", "deps": ["train.py"], "outs": ["done.txt"]}},
        "metrics": ["live"]}))
    for name in (".dvcignore", ".gitignore", "live/.gitkeep"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes((ROOT / name).read_bytes())
    env = tool_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "stage"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=env)
    run = subprocess.Popen(["dvc", "exp", "run", "--temp"], cwd=repo, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        seen, deadline = None, time.monotonic() + 240
        while seen is None and time.monotonic() < deadline and run.poll() is None:
            time.sleep(2)
            shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True,
                                   text=True)
            for base in json.loads(shown.stdout or "[]"):
                for exp in base.get("experiments") or []:
                    for rev in exp["revs"]:
                        metrics = (rev.get("data") or {}).get("metrics") or {}
                        live = metrics.get("live/toy/run-a/metrics.json", {}).get("data")
                        if live and live.get("step") == 4:
                            seen = live, metrics
        assert seen is not None, f"dvc exp show never showed the running stage's metrics; {run.poll()=}"
        live, metrics = seen
        # Only the run's metrics.json is read in live/ (its tsv curves and params are not metrics).
        assert [k for k in metrics if k.startswith("live/")] == ["live/toy/run-a/metrics.json"]
        assert not go.exists() and run.poll() is None  # it was seen while the stage was still running
    finally:
        go.touch()
        out = run.communicate(timeout=240)[0]
    assert run.returncode == 0, out
    assert set(live) >= {"loss", "lr", "grad_norm", "tokens", "step"}
    assert live["tokens"] == 4 * 4 * 16 and os.path.isfile(repo / "live" / ".gitkeep")


def test_params_check_names_a_tracker_that_is_not_installed():
    """lmrepro.launch.problems (the params-check's launch step): the paper profile logs to DVCLive, installed
    here; a tracker that is not stops the pipeline before any stage, named with how to install it."""
    import dataclasses

    from lmrepro.config import load_config
    from lmrepro.launch import problems

    paper = load_config(ROOT / "params.yaml", profile="paper")
    assert paper.train.trackers == ["dvclive"] and paper.xformer and problems(paper, {}) == []
    absent = next(t for t in ("aim", "swanlab", "trackio", "clearml") if not _installed(t))
    other = dataclasses.replace(paper, train=dataclasses.replace(paper.train, trackers=["dvclive", absent]))
    assert problems(other, {}) == [f"train.trackers: ['{absent}'] not installed on this machine (pip install {absent})"]


def test_a_failing_tracker_is_reported_and_training_goes_on(make_spec, make_train_config, token_dirs, tmp_path,
                                                            caplog):
    """A tracker that fails while the run trains (a service unreachable, a full disk) costs a warning, not the run:
    the run completes, its CSV is whole."""
    import logging

    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class Unreachable(GeneralTracker):
        name, requires_logging_directory = "unreachable", False

        def __init__(self):
            super().__init__()
            self.calls = 0

        @property
        def tracker(self):
            return None

        def store_init_configuration(self, values):
            pass

        def log(self, values, step=None, **kwargs):
            self.calls += 1
            raise ConnectionError("service unreachable")

        def finish(self):
            raise ConnectionError("service unreachable")

    tracker = Unreachable()
    train, val = token_dirs
    t = Trainer(make_spec(), make_train_config(), train, tmp_path / "out", tmp_path / "ckpt", val_dir=val,
                log_path=tmp_path / "log.csv", progress=False, accelerator=Accelerator(cpu=True, log_with=[tracker]),
                live_dir=tmp_path / "live")
    with caplog.at_level(logging.WARNING, logger="lmrepro.train.trainer"):
        result = t.fit()
    assert result.completed and len(csv_rows(tmp_path / "log.csv")) == 12 and tracker.calls == 12
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not send step" in m and "service unreachable" in m for m in messages) == 12
    assert any("tracker unreachable did not close" in m for m in messages)
