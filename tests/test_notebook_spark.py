"""notebooks/fruits_spark.ipynb executed end to end (nbclient) on local Spark and the sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bovw

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("pyspark")

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fruits_spark.ipynb"


def _kernels_ready() -> bool:
    t = bovw.read_images(bovw.sample_data_path()).slice(0, 1)
    ok = bovw.extract_descriptors(t, "sift", n_threads=1).column("error")[0].as_py() is None
    import bovw._bovw as core

    return ok and hasattr(bovw, "KMeans") and hasattr(bovw, "PCA") and hasattr(core, "bow_arrow_counts")


@pytest.mark.skipif(not _kernels_ready(), reason="SIFT / KMeans / BoW / PCA kernels not merged yet")
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
