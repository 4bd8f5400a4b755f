"""params.yaml → typed, validated configuration.

``params.yaml`` holds ``profile: <name>`` and ``profiles: {smoke: ..., laptop: ..., paper: ...}``.
:func:`load_config` validates every profile (so a typo in ``paper`` fails on a laptop too) and
returns the selected one as a frozen :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from .schema import Config, DataConfig, EvalConfig, HFSourceConfig, ModelConfig, TokenizerConfig, TrainConfig
from .papers import ClaimConfig
from .schema_tools import ConfigError, build

PROFILES = ("smoke", "laptop", "paper")
PAPERS = ("hybrid_attention", "xformer", "lora_alpha")


@dataclasses.dataclass(frozen=True)
class _Claims:
    papers: dict[str, dict[str, ClaimConfig]]
DEFAULT_PARAMS = "params.yaml"

__all__ = [
    "Config", "ConfigError", "DataConfig", "EvalConfig", "HFSourceConfig", "ModelConfig",
    "TokenizerConfig", "TrainConfig", "PROFILES", "load_config", "load_params", "find_params",
    "config_to_dict", "fingerprint",
]


def find_params(start: str | Path | None = None) -> Path:
    """Locate params.yaml in ``start`` or its parents (notebooks run from notebooks/<paper>/)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_PARAMS).is_file():
            return folder / DEFAULT_PARAMS
    raise ConfigError(f"params.yaml: not found in {here} or any parent folder")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read params.yaml as plain data (no validation)."""
    path = Path(path) if path else find_params()
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys 'profile' and 'profiles'")
    return raw


def load_config(path: str | Path | None = None, profile: str | None = None) -> Config:
    """Validate params.yaml and return the profile named by ``profile`` (default: its ``profile`` key)."""
    raw = load_params(path)
    unknown = sorted(set(raw) - {"profile", "profiles", "claims"}, key=str)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level key; allowed are ['claims', 'profile', 'profiles']")
    claims = raw.get("claims") or {}
    if not isinstance(claims, dict):
        raise ConfigError("claims: expected a mapping of paper → {claim id: criterion}")
    bad = sorted(set(claims) - set(PAPERS), key=str)
    if bad:
        raise ConfigError(f"claims.{bad[0]}: unknown paper; allowed are {list(PAPERS)}")
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: missing or not a mapping of profile name → settings")
    extra = sorted(set(profiles) - set(PROFILES), key=str)
    if extra:
        raise ConfigError(f"profiles.{extra[0]}: unknown profile; allowed are {list(PROFILES)}")
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise ConfigError(f"profiles.{missing[0]}: missing; every profile of {list(PROFILES)} must be defined")
    # The file's own `profile` key is checked even when the caller overrides it, so a typo there
    # cannot hide until the next run without an override.
    default = raw.get("profile", "laptop")
    if not isinstance(default, str) or default not in PROFILES:
        raise ConfigError(f"profile: {default!r} is not allowed; choose one of {list(PROFILES)}")
    selected = profile if profile is not None else default
    if not isinstance(selected, str) or selected not in PROFILES:
        raise ConfigError(f"profile: {selected!r} (requested) is not allowed; choose one of {list(PROFILES)}")
    built = {}
    for name in PROFILES:
        section = profiles[name]
        if not isinstance(section, dict):
            raise ConfigError(f"profiles.{name}: expected a mapping of sections")
        for reserved in ("profile", "claims"):
            if reserved in section:
                raise ConfigError(f"profiles.{name}.{reserved}: not allowed inside a profile")
        built[name] = build(Config, {**section, "profile": name}, f"profiles.{name}")
    # Claims are validated once, at their own path, and shared by every profile.
    shared = build(_Claims, {"papers": claims}, "claims").papers
    built = {name: dataclasses.replace(c, claims=shared) for name, c in built.items()}
    return built[selected]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-serializable dict of a config dataclass (for provenance and checkpoints)."""
    return dataclasses.asdict(cfg)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a config (dataclass or plain data) used to key resumable checkpoints."""
    import hashlib

    data = config_to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
