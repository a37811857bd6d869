"""Every notebook runs top to bottom headless at SMOKE=1 (nbclient, the current interpreter's kernel), and is
committed without outputs."""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_notebooks_exist():
  assert NOTEBOOKS, f"no notebooks under {ROOT}/notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("SMOKE", "1")
  monkeypatch.setenv("ARJAX_NOTEBOOK_DIR", str(tmp_path))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  # the kernelspec's "python" is replaced by this interpreter; a failing cell raises CellExecutionError with its
  # source and traceback
  NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": os.path.dirname(path)}}
                 ).execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  dirty = [i for i, cell in enumerate(nb.cells)
           if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
  assert not dirty, f"{path}: cells {dirty} carry outputs; run python scripts/strip_notebooks.py {path}"
