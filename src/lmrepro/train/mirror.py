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
(spec, semantic training config, data) names the run, so two machines training the same run share its folder and
a run of another configuration never resumes from it. A checkpoint's ``state.json`` holds the hashes of its
other files and is uploaded last: a checkpoint whose upload was cut short has none and is never restored.
Restoring downloads into ``step-<N>.tmp`` and renames, like a local save; loading then checks every hash.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from . import checkpoint as ckpt

ENV, MINUTES_ENV = "LMREPRO_CHECKPOINT_MIRROR", "LMREPRO_MIRROR_MINUTES"
STATE = "state.json"
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
        self._last = time.monotonic()
        self._budgets_sent: set[str] = set()

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
        snapshots not sent yet; keep the newest ``keep`` remote checkpoints."""
        run = self._run(fingerprint)
        budgets = folder.parent / "budgets"
        for snap in sorted(budgets.iterdir()) if budgets.is_dir() else []:
            if snap.name not in self._budgets_sent:
                self._put_folder(snap, f"{run}/budgets/{snap.name}")
                self._budgets_sent.add(snap.name)
        self._put_folder(folder, f"{run}/{folder.name}", last=STATE)
        for old in self._remote_steps(run)[:-keep]:
            self.fs.rm(f"{run}/{ckpt.STEP_PREFIX}{old:07d}", recursive=True)
        self._last = time.monotonic()
        log.info("mirrored %s to %s", folder.name, run)

    def _put_folder(self, local: Path, remote: str, last: str | None = None) -> None:
        self.fs.makedirs(remote, exist_ok=True)
        files = sorted(p.name for p in local.iterdir() if p.is_file())
        for name in [n for n in files if n != last] + [n for n in files if n == last]:
            self.fs.put_file(str(local / name), f"{remote}/{name}")

    # -- restore -----------------------------------------------------------------------------------------------
    def _remote_steps(self, run: str) -> list[int]:
        """Steps of the complete checkpoints (state.json present) under ``run``, ascending."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(run, detail=False)]
        except FileNotFoundError:
            return []
        steps = [int(n[len(ckpt.STEP_PREFIX):]) for n in names
                 if n.startswith(ckpt.STEP_PREFIX) and n[len(ckpt.STEP_PREFIX):].isdigit()]
        return sorted(s for s in steps if self.fs.exists(f"{run}/{ckpt.STEP_PREFIX}{s:07d}/{STATE}"))

    def pull(self, ckpt_dir: Path, fingerprint: str) -> Path | None:
        """Download the newest remote checkpoint of this run when it is newer than every local one (and the budget
        snapshots missing here); return its local folder, or None when the local ones are as new."""
        run = self._run(fingerprint)
        steps = self._remote_steps(run)
        local = ckpt.list_checkpoints(ckpt_dir)
        newest_local = int(local[-1].name[len(ckpt.STEP_PREFIX):]) if local else -1
        if not steps or steps[-1] <= newest_local:
            return None
        if self.fs.exists(f"{run}/budgets"):
            for path in self.fs.ls(f"{run}/budgets", detail=False):
                name = path.rstrip("/").rsplit("/", 1)[-1]
                if not (ckpt_dir / "budgets" / name).is_dir():
                    self._get_folder(f"{run}/budgets/{name}", ckpt_dir / "budgets" / name)
                self._budgets_sent.add(name)
        name = f"{ckpt.STEP_PREFIX}{steps[-1]:07d}"
        self._get_folder(f"{run}/{name}", ckpt_dir / name)
        log.info("restored %s from the mirror %s", name, run)
        return ckpt_dir / name

    def _get_folder(self, remote: str, local: Path) -> None:
        tmp = local.with_name(local.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in self.fs.ls(remote, detail=False):
            self.fs.get_file(path, str(tmp / path.rstrip("/").rsplit("/", 1)[-1]))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
