"""The paper profile's Hub access is checked by the params-check stage before anything runs: the real
huggingface_hub client against a Hub endpoint served on 127.0.0.1 (HF_ENDPOINT) that answers the access check
the way the Hub does for a gated model (403, X-Error-Code: GatedRepo), a missing repository (404, RepoNotFound)
and a public one (200)."""

import hashlib
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from conftest import pipeline_copy, tool_env

from lmrepro import hub, yaml12
from lmrepro.config import load_config
from lmrepro.config.check import STAMP

GATED, MISSING = "meta-llama/Llama-3.2-1B", "allenai/tulu-3-sft-mixture"


def test_paper_profile_names_every_download_and_the_others_none():
    assert [(n.key, n.repo_id, n.repo_type) for n in hub.needs(load_config(profile="paper"))] == [
        ("data.hf.path", "HuggingFaceFW/fineweb-edu", "dataset"),
        ("lora_alpha.hf_model.name", GATED, "model"),
        ("lora_alpha.tasks.domain.hf.path", "open-web-math/open-web-math", "dataset"),
        ("lora_alpha.tasks.reasoning.hf.path", MISSING, "dataset")]
    for profile in ("smoke", "laptop"):
        assert hub.needs(load_config(profile=profile)) == []
        assert hub.problems(load_config(profile=profile)) == []  # asks nothing, even offline


def test_offline_with_a_downloading_profile_is_one_clear_problem(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (msg,) = hub.problems(load_config(profile="paper"))
    assert "HF_HUB_OFFLINE is set" in msg and GATED in msg and "lora_alpha.hf_model.name" in msg


def commit_of(repo: str) -> str:
    """The fake Hub's current commit of ``repo`` (40 hex digits, distinct per repository)."""
    return hashlib.sha1(repo.encode()).hexdigest()


class FakeHubAccess(BaseHTTPRequestHandler):
    """/api/<type>s/<repo>/auth-check as the Hub answers it; every request is recorded."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        FakeHubAccess.seen.append(self.path)
        status, code = 200, None
        if not self.path.endswith("auth-check"):  # repository info: public metadata, gated or not
            repo = self.path.split("?")[0].split("/", 3)[3]
            return self._send(200, {"id": repo, "sha": commit_of(repo), "private": False})
        if self.path.startswith(f"/api/models/{GATED}/auth-check"):
            status, code = 403, "GatedRepo"
        elif self.path.startswith(f"/api/datasets/{MISSING}/auth-check"):
            status, code = 404, "RepoNotFound"
        self._send(status, {"error": code} if code else {}, code)

    def _send(self, status: int, data: dict, error_code: str | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHubAccess)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHubAccess.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_params_check_stops_a_paper_run_on_a_gated_model_before_any_stage(tmp_path, fake_hub):
    root = pipeline_copy(tmp_path / "project")
    params = yaml12.loads((root / "params.yaml").read_text())
    params["profile"] = "paper"
    (root / "params.yaml").write_text(yaml12.dumps(params))
    before = (root / "params.yaml").read_text()
    env = {k: v for k, v in tool_env(HF_ENDPOINT=fake_hub).items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    out = subprocess.run(["python", "-m", "lmrepro.config.check"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    err = out.stderr
    assert f"lora_alpha.hf_model.name: {GATED} is gated: accept its license at https://huggingface.co/{GATED}" in err
    assert "hf auth login" in err
    assert f"lora_alpha.tasks.reasoning.hf.path: {MISSING} does not exist on the Hub or is private" in err
    assert "fineweb-edu" not in err and "open-web-math" not in err  # reachable: no complaint
    assert sorted(p for p in FakeHubAccess.seen if p.endswith("/auth-check")) == sorted(
        f"/api/{t}s/{r}/auth-check" for t, r in [("dataset", "HuggingFaceFW/fineweb-edu"), ("model", GATED),
                                               ("dataset", "open-web-math/open-web-math"), ("dataset", MISSING)])
    assert (root / "params.yaml").read_text() == before  # valid parameters are never rolled back
    assert not (root / STAMP).exists()  # so DVC runs no stage after it


def test_pin_writes_the_current_commits_into_the_profile_and_keeps_its_layout(tmp_path, fake_hub):
    """`python -m lmrepro.hub pin --profile paper`: each Hub dataset's and the model's current commit goes into the
    revision setting beside it; nothing else in the file changes; pinned settings stay unless --update."""
    root = pipeline_copy(tmp_path / "project")
    profile = root / "profiles/paper.yaml"
    before = profile.read_text().splitlines()
    env = {k: v for k, v in tool_env(HF_ENDPOINT=fake_hub).items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run(["python", "-m", "lmrepro.hub", "pin"], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cfg = load_config(root / "params.yaml", profile="paper")
    assert cfg.data.hf.revision == commit_of("HuggingFaceFW/fineweb-edu")
    la = cfg.papers["lora_alpha"]
    assert la.hf_model.revision == commit_of(GATED)
    assert la.tasks.domain.hf.revision == commit_of("open-web-math/open-web-math")
    assert la.tasks.reasoning.hf.revision == commit_of(MISSING)
    after = profile.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(after) == len(before) and len(changed) == 4
    assert all(a.strip() == "revision: null" and b.strip().startswith('revision: "') for a, b in changed)
    # pinned stays pinned; --update would move it
    again = subprocess.run(["python", "-m", "lmrepro.hub", "pin"], cwd=root, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("already pinned") == 4
    assert profile.read_text().splitlines() == after


def test_pin_offline_says_why(tmp_path):
    root = pipeline_copy(tmp_path / "project")
    out = subprocess.run(["python", "-m", "lmrepro.hub", "pin"], cwd=root, env=tool_env(), capture_output=True,
                         text=True)
    assert out.returncode == 3 and "HF_HUB_OFFLINE is set" in out.stderr
