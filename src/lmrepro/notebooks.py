"""Keep committed notebooks clean: no outputs, no execution counts, stable metadata.

``python -m lmrepro.notebooks clean [paths…]`` rewrites notebooks in place; ``check`` lists what is not clean and
exits 1 if anything is; ``filter`` reads one notebook on stdin and writes its clean form to stdout — the git clean
filter ``install-filter`` registers for ``notebooks/`` (see ``.gitattributes``), so a notebook that JupyterLab saved
with outputs is what git stores without them: ``git status`` stays clean and nothing has to be cleaned by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

# The kernel `make setup` registers for the project's venv (README "Working with the notebooks"): papermill, Lab and
# other frontends start the notebooks in the environment that has lmrepro, not whatever "python3" is there.
KERNELSPEC = {"name": "lmrepro", "display_name": "Python (lmrepro)", "language": "python"}
NOTEBOOK_METADATA = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
CELL_METADATA_KEYS = ("tags",)  # papermill finds the ``parameters`` cell by its tag


def _notebooks(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths or ["notebooks"]):
        found += sorted(p.rglob("*.ipynb")) if p.is_dir() else [p]
    return [p for p in found if ".ipynb_checkpoints" not in p.parts]


def problems(path: str | Path, text: str | None = None) -> list[str]:
    """What makes the notebook unclean (empty list when clean): the file at ``path``, or ``text`` (its content
    from elsewhere, e.g. a git blob) with ``path`` only naming it."""
    nb = nbformat.reads(Path(path).read_text() if text is None else text, as_version=4)
    out = []
    if dict(nb.metadata) != NOTEBOOK_METADATA:
        out.append(f"{path}: notebook metadata must be exactly {NOTEBOOK_METADATA}")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        out.append(f"{path}: needs exactly one cell tagged 'parameters' (found {len(params)})")
    for i, cell in enumerate(nb.cells):
        if set(cell.metadata) - set(CELL_METADATA_KEYS):
            out.append(f"{path}: cell {i} has metadata {sorted(cell.metadata)}; "
                       f"only {list(CELL_METADATA_KEYS)} allowed")
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            out.append(f"{path}: cell {i} has outputs or an execution count")
        if "id" in cell and not cell.id.startswith("c"):
            out.append(f"{path}: cell {i} id {cell.id!r} is not a stable id (c<number>)")
    return out


def cleaned(text: str) -> str:
    """A notebook's JSON text without outputs and volatile metadata, with stable cell ids."""
    nb = nbformat.reads(text, as_version=4)
    nb.metadata = nbformat.from_dict(NOTEBOOK_METADATA)
    for i, cell in enumerate(nb.cells):
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items()
                                            if k in CELL_METADATA_KEYS and v})  # papermill adds empty tags
        cell.id = f"c{i:02d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def clean(path: str | Path) -> bool:
    """Clean the notebook at ``path`` in place. Returns True if it changed."""
    before = Path(path).read_text()
    text = cleaned(before)
    Path(path).write_text(text)
    return text != before


GIT_FILTER = "lmrepro-notebook"  # the name .gitattributes gives notebooks/**/*.ipynb


def install_filter(repo: str | Path = ".") -> str:
    """Register the git clean filter in ``repo``'s local config (``make setup`` runs this). The command names this
    interpreter, so git cleans with the environment that has lmrepro. Returns the command."""
    import subprocess

    command = f"'{sys.executable}' -m lmrepro.notebooks filter"
    subprocess.run(["git", "config", f"filter.{GIT_FILTER}.clean", command], cwd=repo, check=True)
    return command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("clean", "check", "filter", "install-filter"):
        print(__doc__)
        return 2
    command, paths = argv[0], argv[1:]
    if command == "filter":
        sys.stdout.write(cleaned(sys.stdin.read()))
        return 0
    if command == "install-filter":
        print(f"git filter {GIT_FILTER}: {install_filter()}")
        return 0
    if command == "clean":
        for nb in _notebooks(paths):
            if clean(nb):
                print(f"cleaned {nb}")
        return 0
    found = [msg for nb in _notebooks(paths) for msg in problems(nb)]
    print("\n".join(found) or "all notebooks clean")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
