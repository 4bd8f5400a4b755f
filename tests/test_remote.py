"""`make remote` / `python -m lmrepro.remote`: the project's default DVC remote in one command, with clear errors
for what it cannot use. (Round trips through a folder and an S3-compatible server: tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tool_env

from lmrepro.remote import RemoteError, configure, ensure_plugin, plugin_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path) -> Path:
    """A git + DVC project with this checkout's Makefile."""
    (tmp_path / "Makefile").write_bytes((ROOT / "Makefile").read_bytes())
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=tool_env())
    return tmp_path


def make_remote(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`make remote …` with this interpreter's environment as the project's (``-o setup``: already set up)."""
    return subprocess.run(["make", "-s", "-o", "setup", "remote", f"VENV={sys.prefix}", *args], cwd=project,
                          env=tool_env(), capture_output=True, text=True)


def dvc_config(project: Path) -> str:
    return (project / ".dvc" / "config").read_text()


def test_make_remote_sets_the_default_remote(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    out = make_remote(project, f"URL={folder}")
    assert out.returncode == 0, out.stderr
    assert "default DVC remote 'storage'" in out.stdout
    config = dvc_config(project)
    assert "remote = storage" in config and f"url = {folder}\n" in config
    # an S3-compatible server: the endpoint goes with it (the URL's plugin, dvc-s3, is installed here)
    out = make_remote(project, "URL=s3://bucket/lmrepro", "ENDPOINT=http://127.0.0.1:9000")
    assert out.returncode == 0, out.stderr
    assert "url = s3://bucket/lmrepro" in dvc_config(project) and "endpointurl = http://127.0.0.1:9000" in dvc_config(
        project)


def test_make_remote_without_a_url_says_how(project):
    out = make_remote(project)
    assert out.returncode == 2 and "usage: make remote URL=" in out.stderr
    assert "remote" not in dvc_config(project)


def test_make_remote_passes_the_url_as_text_never_to_the_shell(project):
    out = make_remote(project, "URL=ftp://x/$(shell touch pwned-make)$(touch pwned-sh)`touch pwned-shell`")
    assert out.returncode == 2 and "scheme 'ftp' is not supported" in out.stderr
    assert not list(project.glob("pwned*"))


@pytest.mark.parametrize("url, message", [
    ("https://example.com/store", "scheme 'https' is not supported here; use one of s3://, gs://, azure://, ssh://"),
    ("s3:///no-bucket", "names no bucket or host"),
])
def test_unusable_urls_are_refused_before_dvc_is_touched(url, message, project):
    with pytest.raises(RemoteError, match=message):
        configure(url, repo=project)
    assert "remote" not in dvc_config(project)


def test_a_missing_plugin_is_named_with_its_install_command():
    assert plugin_for("/mnt/shared/store") is None and plugin_for("s3://b/p") == ("dvc_s3", "dvc-s3")
    pytest.importorskip("dvc_s3")
    ensure_plugin("s3://b/p")  # installed here (the dev extra): nothing to do
    if subprocess.run([sys.executable, "-c", "import dvc_gs"], capture_output=True).returncode == 0:
        pytest.skip("dvc-gs is installed here")
    with pytest.raises(RemoteError, match=r"gs://b/p needs DVC's plugin dvc-gs: pip install dvc-gs .*\[cloud\]"):
        ensure_plugin("gs://b/p")


def test_an_endpoint_is_only_for_s3(project):
    with pytest.raises(RemoteError, match="--endpoint is for s3:// remotes"):
        configure("/mnt/store", endpoint="http://127.0.0.1:9000", repo=project)
