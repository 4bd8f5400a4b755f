"""Resumable checkpoints mirrored to a remote, so a preempted run resumes on another machine.

``LMREPRO_CHECKPOINT_MIRROR`` says where (unset or ``off``: nowhere):
- ``dvc`` / ``dvc:<name>``: the project's default (or named) DVC remote, with the endpoint and credentials DVC is
  configured with; a pipeline stage sets ``dvc`` itself when the project has a default remote
  (:func:`activate_for_project`, called by ``lmrepro.stage.setup``);
- any fsspec URL (``s3://bucket/prefix``, ``gs://…``) or a folder.
``LMREPRO_MIRROR_MINUTES`` (default 10): a checkpoint is uploaded when it is saved at least that long after the
previous upload; the checkpoint an interrupted run saves on its way out (SIGTERM of a preemption, Ctrl-C) is
always uploaded.

Layout: ``<remote>/checkpoints/<run fingerprint>/step-<N>/`` and ``…/budgets/budget-<tokens>/``. The fingerprint
(spec, semantic training config, data, sampler) names the run, so two machines training the same run share its
folder and a run of another configuration never resumes from it. A checkpoint's ``state.json`` holds the hashes of
its other files and is uploaded last (a budget snapshot's ``spec.json``, which holds its weights' hash, likewise):
a folder whose upload was cut short has none, is never restored, and is removed by the next upload. Restoring
downloads into ``<name>.tmp`` and renames, like a local save; loading then checks every hash.

The mirror is a safety copy: a store that cannot be opened or read is logged and training goes on without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from . import checkpoint as ckpt

ENV, MINUTES_ENV = "LMREPRO_CHECKPOINT_MIRROR", "LMREPRO_MIRROR_MINUTES"
STATE = "state.json"  # uploaded last: a checkpoint folder without it is incomplete
SNAPSHOT_LAST = "spec.json"  # the same for a budget snapshot (a model folder)
log = logging.getLogger(__name__)


def activate_for_project(root: str | Path) -> str | None:
    """Mirror to the project's default DVC remote unless ``LMREPRO_CHECKPOINT_MIRROR`` already says otherwise;
    return the remote's name (None: no mirroring). Needs DVC (the pipeline extra) only when a project has one."""
    if os.environ.get(ENV):
        return None if os.environ[ENV] == "off" else os.environ[ENV]
    config = Path(root) / ".dvc"
    if not any((config / name).is_file() for name in ("config", "config.local")):
        return None
    from dvc.config import Config

    name = Config(dvc_dir=str(config)).get("core", {}).get("remote")
    if name:
        os.environ[ENV] = "dvc"
    return name


class CheckpointMirror:
    """Upload (:meth:`push`) and restore (:meth:`pull`) one run's resumable checkpoints and budget snapshots."""

    def __init__(self, fs, root: str, every_minutes: float = 10.0):
        self.fs, self.root, self.every_s = fs, root.rstrip("/"), 60.0 * every_minutes
        self._last = time.monotonic()  # of the last upload attempt: a failing store is retried after the period
        self._budgets_sent: set[str] = set()
        self._pushed: tuple[str, int] | None = None  # (fingerprint, step) of the last complete upload

    @classmethod
    def from_env_or_none(cls) -> CheckpointMirror | None:
        """:meth:`from_env`, or None with a warning when the mirror cannot be opened (a missing plugin, bad
        configuration): training never stops because its safety copy is unavailable."""
        try:
            return cls.from_env()
        except Exception as err:  # noqa: BLE001 — ImportError of a plugin, DVC config errors, fsspec errors
            log.warning("checkpoints are not mirrored: %s=%s cannot be opened (%s: %s)", ENV, os.environ.get(ENV),
                        type(err).__name__, err)
            return None

    @classmethod
    def from_env(cls) -> CheckpointMirror | None:
        """The mirror ``LMREPRO_CHECKPOINT_MIRROR`` names, or None."""
        where = os.environ.get(ENV, "")
        if where in ("", "off"):
            return None
        minutes = float(os.environ.get(MINUTES_ENV, "10"))
        if minutes < 0:
            raise ValueError(f"{MINUTES_ENV}={minutes}: must be ≥ 0 (0 uploads every checkpoint)")
        if where == "dvc" or where.startswith("dvc:"):
            from dvc.repo import Repo

            with Repo() as repo:
                remote = repo.cloud.get_remote(where.partition(":")[2] or None)
            fs, root = remote.fs.fs, remote.path
        else:
            import fsspec

            fs, root = fsspec.core.url_to_fs(where)
        return cls(fs, f"{root.rstrip('/')}/checkpoints", minutes)

    def _run(self, fingerprint: str) -> str:
        return f"{self.root}/{fingerprint}"

    # -- upload ------------------------------------------------------------------------------------------------
    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def push(self, folder: Path, fingerprint: str, keep: int) -> None:
        """Upload the checkpoint ``folder`` (``…/<fingerprint>/step-N``, state.json last) and the run's budget
        snapshots not sent yet (spec.json last); keep the newest ``keep`` remote checkpoints and remove the
        incomplete ones older than the newest. A checkpoint uploaded already is not sent again."""
        self._last = time.monotonic()
        step = int(folder.name[len(ckpt.STEP_PREFIX):])
        if self._pushed == (fingerprint, step):
            return
        run = self._run(fingerprint)
        budgets = folder.parent / "budgets"
        for snap in sorted(budgets.iterdir()) if budgets.is_dir() else []:
            if snap.name not in self._budgets_sent:
                self._put_folder(snap, f"{run}/budgets/{snap.name}", last=SNAPSHOT_LAST)
                self._budgets_sent.add(snap.name)
        self._put_folder(folder, f"{run}/{folder.name}", last=STATE)
        self._pushed = (fingerprint, step)
        complete, started = self._remote_steps(run), self._remote_steps(run, complete=False)
        for old in complete[:-keep] + [s for s in started if s not in complete and s < step]:
            self.fs.rm(f"{run}/{ckpt.STEP_PREFIX}{old:07d}", recursive=True)
        log.info("mirrored %s to %s", folder.name, run)

    def _put_folder(self, local: Path, remote: str, last: str | None = None) -> None:
        self.fs.makedirs(remote, exist_ok=True)
        files = sorted(p.name for p in local.iterdir() if p.is_file())
        for name in [n for n in files if n != last] + [n for n in files if n == last]:
            self.fs.put_file(str(local / name), f"{remote}/{name}")

    # -- restore -----------------------------------------------------------------------------------------------
    def _names(self, folder: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    def _remote_steps(self, run: str, complete: bool = True) -> list[int]:
        """Steps of the checkpoints under ``run``, ascending: the complete ones (state.json present), or every
        one started (``complete=False``)."""
        steps = [int(n[len(ckpt.STEP_PREFIX):]) for n in self._names(run)
                 if n.startswith(ckpt.STEP_PREFIX) and n[len(ckpt.STEP_PREFIX):].isdigit()]
        if complete:
            steps = [s for s in steps if self.fs.exists(f"{run}/{ckpt.STEP_PREFIX}{s:07d}/{STATE}")]
        return sorted(steps)

    def pull(self, ckpt_dir: Path, fingerprint: str) -> list[Path]:
        """Download the remote checkpoints of this run newer than every local one (the trainer then loads the
        newest and falls back to the older ones if it is damaged) and the complete budget snapshots missing
        here; return the downloaded folders, oldest first."""
        run = self._run(fingerprint)
        for name in self._names(f"{run}/budgets"):
            if self.fs.exists(f"{run}/budgets/{name}/{SNAPSHOT_LAST}"):  # its upload finished
                if not (ckpt_dir / "budgets" / name).is_dir():
                    self._get_folder(f"{run}/budgets/{name}", ckpt_dir / "budgets" / name)
                self._budgets_sent.add(name)
        local = ckpt.list_checkpoints(ckpt_dir)
        newest_local = int(local[-1].name[len(ckpt.STEP_PREFIX):]) if local else -1
        fetched = []
        for step in [s for s in self._remote_steps(run) if s > newest_local]:
            name = f"{ckpt.STEP_PREFIX}{step:07d}"
            self._get_folder(f"{run}/{name}", ckpt_dir / name)
            fetched.append(ckpt_dir / name)
            self._pushed = (fingerprint, step)
        if fetched:
            log.info("restored %s from the mirror %s", ", ".join(p.name for p in fetched), run)
        return fetched

    def _get_folder(self, remote: str, local: Path) -> None:
        tmp = local.with_name(local.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in self.fs.ls(remote, detail=False):
            self.fs.get_file(path, str(tmp / path.rstrip("/").rsplit("/", 1)[-1]))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
