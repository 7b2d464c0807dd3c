"""benches/run.py --only replaces the sections it remakes and keeps the rest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benches" / "run.py"


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OLD = """# Benchmarks

Made by `python benches/run.py --quick` on 2026-01-01.

## bow

| old bow table |

_bow: 4 s in all._

## cnn

| old cnn table |

A note written by hand under the CNN table.

## dense

| old dense table |

## kmeans: FAILED

```
Traceback (old)
```

## orb: FAILED

```
Traceback (orb)
```

## Full runs (all real images, one stage per run)

old full runs text
"""


def test_only_replaces_its_sections_and_keeps_the_others():
    run = _run_module()
    new = run.splice(
        OLD,
        {"cnn": ["## cnn", "", "| new cnn table |", ""], "kmeans": ["## kmeans", "", "| new kmeans table |", ""],
         "spark": ["## spark", "", "| new spark table |", ""]},
        "## Full runs (all real images, one stage per run)\n\nnew full runs text",
        {"cnn", "kmeans", "spark"},
    )
    assert new == """# Benchmarks

Made by `python benches/run.py --quick` on 2026-01-01.

## bow

| old bow table |

_bow: 4 s in all._

## cnn

| new cnn table |

## dense

| old dense table |

## orb: FAILED

```
Traceback (orb)
```

## kmeans

| new kmeans table |

## spark

| new spark table |

## Full runs (all real images, one stage per run)

new full runs text
"""


def test_a_stage_that_fails_again_keeps_one_failure_section():
    run = _run_module()
    new = run.splice(OLD, {"kmeans: FAILED": ["## kmeans: FAILED", "", "new traceback", ""]}, None, {"kmeans"})
    assert new.count("## kmeans: FAILED") == 1
    assert "new traceback" in new and "Traceback (old)" not in new
    assert "| old cnn table |" in new and "A note written by hand" in new
    assert "old full runs text" not in new
