"""``python -m lmrepro.config.check``: the ``params-check`` stage, which every other stage runs after.

DVC deletes a stage's outputs before it runs the command, so parameters validated inside a notebook are
validated too late: a typo in ``profile`` used to cost the corpus, tokenizer and tokens. This stage has no
interpolated values in its command and every pipeline depends on its output, so on any invalid parameter DVC
stops here, before it removes or writes anything else (``dvc repro``, ``dvc exp run`` and ``make repro``
alike). It checks, in order:

1. every value that the pipelines' ``dvc.yaml`` files interpolate (``${profile}``, the ``foreach`` lists) is a
   plain identifier — these values reach a shell;
2. params.yaml and every profile file, with the project's loader (YAML 1.2 as DVC reads it, duplicate keys
   refused, every key typed and bounded);
3. for a profile that downloads (mid, paper), that the Hub serves each repository it names to this machine — a
   gated model without a login fails here, not days later (``lmrepro.hub``; exit status 3, the parameters
   untouched);
4. that this machine's launch can train every run: the machines' rank and address variables when
   ``launch.machines`` (or the scheduler) asks for several, and every batch divisible by micro-batch × processes ×
   machines (``lmrepro.launch.problems``; exit status 3).

Its output holds constant text on purpose: a valid edit must not make every stage rerun (what each stage
reads is in its own ``params`` list). After a success it keeps a copy of the parameter files; after a
failure it puts those copies back (``dvc exp run -S profile=typo`` has already rewritten params.yaml), keeps
the rejected files as ``<file>.rejected`` and exits with status 2. It restores only copies taken at the
current git commit, so it never undoes a checkout or a pull.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import yaml12
from ..paths import PARAMS_FILE, ProjectNotFound, find_params
from . import Config, load_config, load_params
from .schema_tools import ConfigError

STAMP = Path("results/params_check.txt")
STAMP_TEXT = "params.yaml and profiles/*.yaml passed lmrepro.config.check\n"
SNAPSHOT = Path(".dvc/tmp/lmrepro/valid-params")  # DVC's own untracked scratch folder
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
INTERPOLATION = re.compile(r"\$\{\s*([^}]*?)\s*\}")


def pipeline_files(root: Path) -> list[Path]:
    """The root dvc.yaml and every pipelines/<paper>/dvc.yaml."""
    return [p for p in (root / "dvc.yaml", *sorted((root / "pipelines").glob("*/dvc.yaml"))) if p.is_file()]


def parameter_files(root: Path) -> list[Path]:
    """params.yaml and profiles/*.yaml (what a careless edit or ``dvc exp run -S`` can change)."""
    return [root / PARAMS_FILE, *sorted((root / "profiles").glob("*.yaml"))]


def _lookup(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check_interpolations(root: Path, params: dict) -> None:
    """Every ``${key}`` in the pipelines (``item`` aside: its list is itself interpolated) must name a plain
    identifier or a list of them in params.yaml; anything else could run as shell code."""
    for dvc_file in pipeline_files(root):
        name = dvc_file.relative_to(root)
        for key in sorted(set(INTERPOLATION.findall(dvc_file.read_text()))):
            if key == "item" or key.startswith("item."):
                continue
            try:
                value = _lookup(params, key)
            except KeyError:
                raise ConfigError(f"{name} uses ${{{key}}}, which {PARAMS_FILE} does not define") from None
            for item in value if isinstance(value, list) else [value]:
                if not (isinstance(item, str) and PLAIN.match(item)):
                    raise ConfigError(f"{PARAMS_FILE}: {key}: {item!r} is interpolated into commands by {name} "
                                      "and must be a plain name (letters, digits, '_', '.', '-')")


def validate(root: Path) -> Config:
    """The selected profile's config; raises ConfigError (or yaml12.YAMLError) on the first invalid parameter
    of the project at ``root``."""
    check_interpolations(root, load_params(root / PARAMS_FILE))
    return load_config(root / PARAMS_FILE)


def _head(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def remember(root: Path) -> None:
    """Copy the (valid) parameter files, with the commit they were valid at."""
    head = _head(root)
    snap = root / SNAPSHOT
    shutil.rmtree(snap, ignore_errors=True)
    if head is None:
        return
    for path in parameter_files(root):
        dest = snap / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    (snap / "HEAD").write_text(head)


def restore(root: Path) -> list[str]:
    """Put back the parameter files remembered at this commit; the rejected ones are kept as ``.rejected``.
    Returns the restored names (none when there is no copy from this commit)."""
    snap = root / SNAPSHOT
    head = _head(root)
    if head is None or not (snap / "HEAD").is_file() or (snap / "HEAD").read_text() != head:
        return []
    restored = []
    for path in parameter_files(root):
        saved = snap / path.relative_to(root)
        if saved.is_file() and saved.read_bytes() != path.read_bytes():
            shutil.copy2(path, path.with_name(path.name + ".rejected"))
            shutil.copy2(saved, path)
            restored.append(str(path.relative_to(root)))
    for saved in sorted(snap.glob("profiles/*.yaml")):  # a profile file deleted by mistake
        path = root / saved.relative_to(snap)
        if not path.exists():
            shutil.copy2(saved, path)
            restored.append(str(path.relative_to(root)))
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.config.check", description=__doc__.split("\n")[0])
    parser.add_argument("--no-restore", action="store_true", help="on failure, leave the parameter files as they are")
    args = parser.parse_args(argv)
    try:
        root = find_params().parent
        cfg = validate(root)
    except ProjectNotFound as err:
        print(f"params check: {err}", file=sys.stderr)
        return 2
    except (ConfigError, yaml12.YAMLError) as err:
        restored = [] if args.no_restore else restore(root)
        print(f"params check: {err}\nNothing was run, removed or changed.", file=sys.stderr)
        if restored:
            print(f"Restored the last valid {', '.join(restored)} (the rejected version of each is kept beside it "
                  "as <file>.rejected).", file=sys.stderr)
        return 2
    remember(root)
    from ..hub import problems as hub_problems  # the profile's downloads, before any stage needs them

    unreachable = hub_problems(cfg)
    if unreachable:
        print("params check: the parameters are valid, but this machine cannot read what profile "
              f"{cfg.profile} downloads:\n  " + "\n  ".join(unreachable) + "\nNothing was run, removed or changed.",
              file=sys.stderr)
        return 3
    from ..launch import problems as launch_problems  # processes and machines, before any stage trains

    unlaunchable = launch_problems(cfg)
    if unlaunchable:
        print("params check: the parameters are valid, but this machine's launch cannot train them:\n  "
              + "\n  ".join(unlaunchable) + "\nNothing was run, removed or changed.", file=sys.stderr)
        return 3
    stamp = root / STAMP
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(STAMP_TEXT)
    print(f"params check: params.yaml and profiles/*.yaml are valid (profile: {cfg.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
