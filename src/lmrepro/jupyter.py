"""Jupyter server side of "running or viewing a notebook leaves ``git status`` clean".

``ProjectContentsManager`` is the server's contents manager for this project (``make setup`` registers it with
``python -m lmrepro.jupyter install``, which sets it in ``<env>/etc/jupyter/jupyter_server_config.json``, so
``make lab`` and any ``jupyter lab`` started from the project's environment use it):

- ``notebooks/**.ipynb`` (the stage sources) are saved in their committed clean form (no outputs, stable metadata:
  ``lmrepro.notebooks.cleaned``), so Lab's autosave writes exactly what git holds. Their executed records are in
  ``results/``.
- ``results/**`` (outputs the DVC stages write: executed notebooks, ledgers, figures) is read-only: JupyterLab
  then neither autosaves a record a user runs or views nor saves it on Ctrl-S (it offers "Save as…"), and the
  server refuses a write there from any other client.

Other frontends (VS Code, a system-wide Jupyter) do not go through this server; for them the git clean filter
(``lmrepro.notebooks``) keeps what git stores clean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado.web import HTTPError

from .notebooks import cleaned

CONTENTS_MANAGER = "lmrepro.jupyter.ProjectContentsManager"


def project_part(os_path: str | Path) -> tuple[Path, str] | None:
    """(project root, top folder) of a file inside a project (a folder holding params.yaml and dvc.yaml), else
    None: ``("/repo", "results")`` for ``/repo/results/xformer/claims.json``."""
    path = Path(os_path).resolve()
    for root in path.parents:
        if (root / "params.yaml").is_file() and (root / "dvc.yaml").is_file():
            return root, path.relative_to(root).parts[0]
    return None


def _role(os_path: str) -> str | None:
    """"source" for a notebook under notebooks/, "record" for anything under results/, else None."""
    part = project_part(os_path)
    if part is None:
        return None
    if part[1] == "notebooks" and os_path.endswith(".ipynb"):
        return "source"
    return "record" if part[1] == "results" else None


class ProjectContentsManager(AsyncLargeFileManager):
    """Jupyter's default contents manager with the two rules of the module doc."""

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        model = await super().get(path, content=content, type=type, format=format, require_hash=require_hash)
        if model["type"] != "directory" and _role(self._get_os_path(path)) == "record":
            model["writable"] = False
        return model

    async def save(self, model, path=""):
        role = _role(self._get_os_path(path.strip("/")))
        if role == "record":
            raise HTTPError(403, f"{path} is an output of a DVC stage (results/ is written by `dvc repro`); "
                                 "use File › Save Notebook As… to keep a copy elsewhere")
        if role == "source" and model.get("type") == "notebook" and model.get("content") is not None:
            model = {**model, "content": json.loads(cleaned(json.dumps(model["content"])))}
        return await super().save(model, path)


def install(prefix: str | Path = sys.prefix) -> Path:
    """Register ``ProjectContentsManager`` for servers started from the environment at ``prefix``, keeping any
    other setting in that file. (Jupyter reads ``jupyter_server_config.d/`` only for extensions, not settings.)"""
    target = Path(prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
    config = json.loads(target.read_text()) if target.is_file() else {}
    config.setdefault("ServerApp", {})["contents_manager_class"] = CONTENTS_MANAGER
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(config, indent=2) + "\n")
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m lmrepro.jupyter install")
    print(f"Jupyter server config: {install()}")
