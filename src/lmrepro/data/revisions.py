"""Which commit of a Hub dataset a run reads.

A Hub dataset can change under the same name, so every stream reads one commit: the profile's ``revision``
when it is a commit id, else the commit that ``revision`` (or the default branch) points to when the stage
starts. The commit is recorded with the data (manifest / task summary, both versioned), so a later run can pin
it in the profile. Local data (a packaged builder such as ``json`` with ``data_files``, or a folder) has no
revision.
"""

from __future__ import annotations

import re
from pathlib import Path

from .corpus import DataError

COMMIT = re.compile(r"[0-9a-f]{40}")
# datasets' packaged builders read local files given by data_files: nothing on the Hub to pin.
PACKAGED_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset"})


def is_local(path: str) -> bool:
    return path in PACKAGED_BUILDERS or Path(path).exists()


def resolve_revision(path: str, revision: str | None, key: str) -> str | None:
    """The 40-character commit a stream of dataset ``path`` reads (None for local data).

    ``revision``: a commit id (returned as it is, no network), a branch or tag name, or None (the default
    branch). ``key`` names the profile setting in errors. Raises DataError when a name cannot be resolved
    (offline, unknown repository or revision), saying how to pin it instead.
    """
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise DataError(f"{key} must be a commit id, branch or tag name, or null; got {revision!r}")
    if is_local(path):
        if revision is not None:
            raise DataError(f"{key} is {revision!r} but {path!r} is local data, which has no revisions; "
                            f"remove {key}")
        return None
    if revision is not None and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi  # lazy: only paper-profile data comes from the Hub

    try:
        return HfApi().dataset_info(path, revision=revision).sha
    except Exception as e:  # offline, no such repo or revision: all need the same fix
        raise DataError(f"cannot resolve which commit of dataset {path!r} to read (revision "
                        f"{revision or 'default branch'}): {e}. Run where the Hub is reachable, or pin it: set "
                        f"{key} to a 40-character commit id") from e
