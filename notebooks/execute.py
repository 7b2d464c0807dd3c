"""Execute notebooks in place, top to bottom, and save them with their outputs.

    python notebooks/execute.py                 # every notebooks/*.ipynb
    python notebooks/execute.py quickstart.ipynb

Each notebook runs in a fresh temporary folder (its Spark or job outputs go
there, not into the repository) with the ``python3`` kernel; the bovw the
kernel imports is the one on ``PYTHONPATH`` / installed. Regenerate a
notebook's cells first with its ``make_*.py`` when there is one. A cell that
raises stops the run with the error (the notebook is not written).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 900) -> float:
    """Run ``path`` and write it back with outputs; returns the wall seconds."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="bovw-nb-") as tmp:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": tmp}})
        t0 = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - t0
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    paths = [Path(p) if os.sep in p else HERE / p for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for p in paths:
        print(f"{p.name}: {execute(p):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
