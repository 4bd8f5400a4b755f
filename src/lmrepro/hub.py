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


# -- pinning ---------------------------------------------------------------------------------------------------
def revision_key(need: Need) -> str:
    """The profile setting that pins ``need``'s commit: ``….hf.path`` → ``….hf.revision``, ``hf_model.name`` →
    ``hf_model.revision``."""
    return need.key.rsplit(".", 1)[0] + ".revision"


def current_commit(need: Need) -> str:
    """The commit the default branch of ``need``'s repository points to now (one Hub request)."""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info if need.repo_type == "dataset" else HfApi().model_info
    return info(need.repo_id).sha


def _resolved(cfg, dotted: str):
    """The value of ``dotted`` (``lora_alpha.tasks.domain.hf.revision``) in the resolved config."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def pin(profile_file: str | Path, cfg, update: bool = False) -> list[str]:
    """Write the current commit of every Hub repository ``cfg`` reads into ``profile_file`` where its revision
    is null (``update``: everywhere), so every later run reads exactly that data and that model. The file is
    edited in place, comments and layout kept (ruamel's round trip); one line per setting is returned."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    path = Path(profile_file)
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes, yaml.width = True, 4096
    # nulls stay written as `null` (ruamel's round trip would leave them empty)
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(path.read_text())
    report = []
    for need in needs(cfg):
        key = revision_key(need)
        *parents, leaf = key.split(".")
        old = _resolved(cfg, key)  # pinned in the profile or in params.yaml's shared section
        if old is not None and not update:
            report.append(f"{key}: {need.repo_id} already pinned at {old}")
            continue
        node = doc
        for part in parents:
            if node.get(part) is None:  # absent or written as null
                node[part] = {}
            node = node[part]
        sha = current_commit(need)
        node[leaf] = DoubleQuotedScalarString(sha)  # quoted: an all-digit commit id is a string, not a number
        report.append(f"{key}: {need.repo_id} pinned at {sha}" + (f" (was {old})" if old is not None else ""))
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .config import load_config
    from .paths import find_params

    parser = argparse.ArgumentParser(prog="python -m lmrepro.hub", description="Hub access and data pins.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pin", help="write the current commit of every Hub dataset and model a profile reads into "
                                   "profiles/<profile>.yaml (only where its revision is null, unless --update)")
    p.add_argument("--profile", default="paper")
    p.add_argument("--update", action="store_true", help="replace revisions that are already pinned")
    args = parser.parse_args(argv)
    cfg = load_config(profile=args.profile)
    if not needs(cfg):
        print(f"profile {args.profile} reads nothing from the Hub: nothing to pin")
        return 0
    if _offline():
        print("error: HF_HUB_OFFLINE is set; pinning asks the Hub for the current commits", file=sys.stderr)
        return 3
    profile_file = find_params().parent / "profiles" / f"{args.profile}.yaml"
    for line in pin(profile_file, cfg, args.update):
        print(line)
    print(f"commit {profile_file.name}: every later run reads these commits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
