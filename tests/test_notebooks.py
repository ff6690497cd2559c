"""Every notebook runs top to bottom (its cells assert what they show) and is stored without outputs.

Each notebook sets ``settings`` (its sampler size) in its first cell; the suite runs it with fewer
draws by inserting one cell after that, so what is tested is the notebook as users see it.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMOKE = "import dataclasses\nsettings = dataclasses.replace(settings, num_warmup=300, num_samples=300)"


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
    first = next(i for i, c in enumerate(book.cells) if c.cell_type == "code")
    book.cells.insert(first + 1, nbformat.v4.new_code_cell(SMOKE))
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
