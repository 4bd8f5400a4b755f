"""The message for an input that a pipeline stage makes and that is not there yet."""

from __future__ import annotations


def missing_input(what: str, stage: str) -> str:
    """``what`` (a path, or what the path holds) is missing: the message names the DVC stage that makes it
    (``stage``: its address for ``dvc repro``, e.g. ``pipelines/xformer/dvc.yaml:pretrain@x``) and the
    ``dvc pull`` alternative, for results kept in a DVC remote."""
    return (f"{what} is missing: run `dvc repro {stage}` to make it, or `dvc pull {stage}` to fetch it from "
            "a DVC remote that holds it")
