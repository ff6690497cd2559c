"""Every notebook runs top to bottom (its cells assert what they show) and is stored without outputs.

Each notebook sets ``settings`` (its sampler size) in its first cell; the suite runs it with fewer
draws by adding one line right after that one, so what is tested is the notebook as users see it.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import SMALL, TINY

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
CONVERGED = {"01_quickstart", "02_planning"}
"""Notebooks that assert their fit converged (bulk ESS >= 400) run at the suite's statistical size, the rest
at its behaviour size: the two sampler sizes of the suite (tests/conftest.py)."""


def smoke(path: Path) -> str:
    """The line that sets a notebook's sampler size in the suite, placed right after the notebook's own."""
    size = SMALL if path.stem in CONVERGED else TINY.to_dict()
    fields = {k: size[k] for k in ("num_warmup", "num_samples", "num_chains")}
    return f"settings = bs.SamplerSettings(**{{**settings.to_dict(), **{fields!r}}})  # the test suite's size"


def test_notebooks_found() -> None:
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "settings = bs.SamplerSettings(" in first.source, f"{path.name} sets no sampler settings first"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in book.cells if c.cell_type == "code"), (
        f"{path.name} is stored with outputs; clear them"
    )
    first = next(c for c in book.cells if c.cell_type == "code")
    lines = first.source.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("settings = bs.SamplerSettings("))
    first.source = "\n".join([*lines[:at + 1], smoke(path), *lines[at + 1:]])
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
