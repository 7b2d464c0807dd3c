"""The quickstart notebook runs top to bottom on the committed sample."""

from __future__ import annotations

from pathlib import Path

import pytest

import nbformat  # noqa: E402
import nbclient  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "accuracy on the Test split" in outputs
    acc = float(outputs.split("accuracy on the Test split: ")[1].split()[0])
    # 10 well-separated fruit classes: a SIFT bag of words does far better than chance (0.1).
    assert acc > 0.5, outputs
    # the explained-variance and keypoint figures were drawn
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
