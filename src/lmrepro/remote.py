"""A DVC remote in one command (``make remote URL=…``, or ``python -m lmrepro.remote URL``).

What travels where: executed notebooks, metrics, ledgers, figures and ``dvc.lock`` are in git; everything DVC
caches (corpus, tokenizer, token shards, models, key tokens) goes to the remote with ``dvc push`` and comes back
with ``dvc pull``. After ``git clone`` + ``dvc pull``, ``dvc status`` is clean and any evaluation or report stage
reruns without training. Resumable checkpoints are not stage outputs (a finished run needs none); while a run
trains they can be mirrored to the remote (:mod:`lmrepro.train.mirror`).

Supported URLs: ``s3://bucket/path`` (also S3-compatible stores, with ``--endpoint``), ``gs://``, ``azure://``,
``ssh://user@host/path`` and a local or mounted folder. Credentials stay out of git: DVC reads the usual
environment variables and files (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``~/.ssh``), or
``dvc remote modify --local <name> <key> <value>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

# scheme -> (DVC plugin module, its package); a folder needs none.
PLUGINS = {"s3": ("dvc_s3", "dvc-s3"), "gs": ("dvc_gs", "dvc-gs"), "azure": ("dvc_azure", "dvc-azure"),
           "ssh": ("dvc_ssh", "dvc-ssh")}


class RemoteError(ValueError):
    """A remote URL this project cannot use, or a plugin that is missing."""


def plugin_for(url: str) -> tuple[str, str] | None:
    """The DVC plugin (module, package) that ``url`` needs; None for a folder. RemoteError for other schemes."""
    scheme = urlsplit(url).scheme
    if scheme in PLUGINS:
        if not urlsplit(url).netloc:
            raise RemoteError(f"remote URL {url!r} names no bucket or host: use {scheme}://<bucket-or-host>/<path>")
        return PLUGINS[scheme]
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # a path (C:\ on Windows)
        return None
    raise RemoteError(f"remote URL scheme {scheme!r} is not supported here; use one of "
                      f"{', '.join(f'{s}://' for s in PLUGINS)} or a folder path")


def ensure_plugin(url: str, install: bool = False, repo: str | Path = ".") -> None:
    """Install (``install=True``) or demand the DVC plugin ``url`` needs, at the version the project's
    requirements/lock.txt pins when it pins one."""
    needed = plugin_for(url)
    if needed is None or importlib.util.find_spec(needed[0]) is not None:
        return
    module, package = needed
    if not install:
        raise RemoteError(f"{url} needs DVC's plugin {package}: pip install {package} (or the project's "
                          "[cloud] extra: pip install -e '.[cloud]'), or run `make remote`, which installs it")
    lock = Path(repo) / "requirements" / "lock.txt"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *(["-c", str(lock)] if lock.is_file() else []),
                    package], check=True)


def configure(url: str, name: str = "storage", endpoint: str | None = None, install: bool = False,
              repo: str | Path = ".") -> None:
    """Make ``url`` the project's default DVC remote ``name`` (in .dvc/config, which is committed, so every clone
    pulls from it); ``endpoint`` for an S3-compatible server (MinIO, Ceph, R2, a local test server)."""
    if endpoint and urlsplit(url).scheme != "s3":
        raise RemoteError(f"--endpoint is for s3:// remotes (S3-compatible servers); {url} is not one")
    ensure_plugin(url, install, repo)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "add", "--default", "--force", name, url], cwd=repo, check=True)
    if endpoint:
        subprocess.run([*dvc, "remote", "modify", name, "endpointurl", endpoint], cwd=repo, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.remote", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="s3://bucket/path, gs://…, azure://…, ssh://user@host/path or a folder")
    parser.add_argument("--name", default="storage", help="the remote's name in .dvc/config (default: storage)")
    parser.add_argument("--endpoint", help="endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000")
    parser.add_argument("--install", action="store_true", help="pip install the DVC plugin the URL needs")
    args = parser.parse_args(argv)
    try:
        configure(args.url, args.name, args.endpoint, args.install)
    except RemoteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"default DVC remote {args.name!r} -> {args.url} (.dvc/config; commit it so clones pull from it).\n"
          "Next: `dvc push` sends every cached artifact; on another clone `dvc pull`, then `dvc status` is clean.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
