"""Clears outputs and execution counts of notebooks in place (run before committing one).

  python scripts/strip_notebooks.py                 # every notebooks/*.ipynb
  python scripts/strip_notebooks.py notebooks/01_quickstart.ipynb
"""
import glob
import os
import sys

import nbformat


def strip(nb):
  """Empties outputs, execution counts and per-cell execution metadata; returns nb."""
  for cell in nb.cells:
    cell.metadata.pop("execution", None)
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  nb.metadata.pop("widgets", None)
  return nb


def main(paths):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in paths or sorted(glob.glob(os.path.join(root, "notebooks", "*.ipynb"))):
    nbformat.write(strip(nbformat.read(path, as_version=4)), path)
    print(f"stripped {path}")


if __name__ == "__main__":
  main(sys.argv[1:])
