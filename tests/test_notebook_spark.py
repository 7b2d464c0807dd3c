"""notebooks/fruits_spark.ipynb executed end to end (nbclient) on local Spark and the sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import nbclient
import nbformat

import bovw

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fruits_spark.ipynb"


def test_fruits_spark_notebook_runs(tmp_path, monkeypatch):
    import pandas as pd

    nb = nbformat.read(NOTEBOOK, as_version=4)
    python_dir = str(Path(bovw.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([python_dir, os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    text = "\n".join(texts)
    assert "550 images" in text
    assert "Test accuracy:" in text
    acc = float(text.split("Test accuracy:")[1].split()[0])
    assert acc > 0.5  # 10 classes, chance 0.1
    df = pd.read_parquet(tmp_path / "fruits_spark_out" / "features.parquet")
    assert len(df) == 550 and {"bow", "pca_features", "predicted_label"} <= set(df.columns)
    assert (df["bow"].map(len) == 50).all()
