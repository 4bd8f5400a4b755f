"""Before a profile that downloads anything runs a stage: can this machine read what it needs from the Hub?

The smoke and laptop profiles read nothing from the Hub (the Makefile runs them with ``HF_HUB_OFFLINE=1``). The
paper profile streams its pretraining corpus and the LoRA-α task data and loads Llama-3.2-1B, a *gated* model:
without an accepted license and a login, its first download would fail days into a run, after the pretraining
stages. ``problems`` finds that out in seconds; the ``params-check`` stage (``lmrepro.config.check``) runs it first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .data.revisions import is_local

LOGIN = "log in with `hf auth login` (or set HF_TOKEN)"


@dataclass(frozen=True)
class Need:
    key: str  # the profile setting that names it
    repo_id: str
    repo_type: str  # "model" or "dataset"


def needs(cfg) -> list[Need]:
    """Hub repositories the selected profile reads (none for local data or a local model folder)."""
    out = []
    if cfg.data.source == "hf" and not is_local(cfg.data.hf.path):
        out.append(Need("data.hf.path", cfg.data.hf.path, "dataset"))
    la = cfg.papers.get("lora_alpha")
    if la is not None:
        if la.hf_model is not None and not Path(la.hf_model.name).exists():
            out.append(Need("lora_alpha.hf_model.name", la.hf_model.name, "model"))
        for task in ("domain", "reasoning"):
            t = getattr(la.tasks, task)
            if t.source == "hf" and not is_local(t.hf.path):
                out.append(Need(f"lora_alpha.tasks.{task}.hf.path", t.hf.path, "dataset"))
    return out


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def problems(cfg) -> list[str]:
    """One message per repository this machine cannot read now (empty: go ahead). Asks the Hub's access check
    for each (a few requests; nothing is downloaded)."""
    wanted = needs(cfg)
    if not wanted:
        return []
    if _offline():
        names = ", ".join(f"{n.repo_id} ({n.key})" for n in wanted)
        return [f"profile {cfg.profile} downloads {names}, but HF_HUB_OFFLINE is set: unset it (the Makefile sets it "
                "only for the profiles that download nothing)"]
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    out = []
    for n in wanted:
        page = f"https://huggingface.co/{'datasets/' if n.repo_type == 'dataset' else ''}{n.repo_id}"
        try:
            auth_check(n.repo_id, repo_type=n.repo_type)
        except GatedRepoError:
            out.append(f"{n.key}: {n.repo_id} is gated: accept its license at {page} with your account, then "
                       f"{LOGIN}")
        except RepositoryNotFoundError:
            out.append(f"{n.key}: {n.repo_id} does not exist on the Hub or is private ({LOGIN} if it is yours)")
        except Exception as err:  # HTTP status or the network layer (its exception types vary by version)
            out.append(f"{n.key}: cannot reach the Hub to check {n.repo_id}: {type(err).__name__}: {err}")
    return out
