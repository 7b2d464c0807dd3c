"""Run every benchmark in benches/py/ and write BENCHMARKS.md.

Usage (from the repository root, with bovw and the bench extras installed,
e.g. ``pip install -e '.[bench]'``)::

    python benches/run.py            # full run (tens of minutes on 2 cores)
    python benches/run.py --quick    # < 5 minutes, small inputs
    python benches/run.py --only sift kmeans        # remake these sections only
    python benches/run.py --quick --full encoding   # quick, but encoding on full inputs

With ``--only``, the sections of the stages run replace their own sections of
the existing file (the others, and any notes written under them, are kept);
each such section says which command made it, when, and on which machine.
The "Full runs" part is always copied from ``benches/full_runs.md``.

``bench_dense`` compares with cyvlfeat 0.7.1 (install it as ``scripts/test.sh``
does: Debian's ``libvlfeat-dev``, then ``pip install cython`` and
``pip install --no-build-isolation cyvlfeat==0.7.1``).

Each ``benches/py/bench_<stage>.py`` exposes ``run(quick: bool) -> list[dict]``
with rows ``stage, case, reference, ours_s, ref_s, speedup, notes``: both
sides measured in the same process, on the same inputs, in the same run.
Speed is measured here and never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(mod)
    return mod


def _fmt(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.1f}"
        return f"{v:.{digits}g}"
    return str(v)


def machine() -> str:
    import numpy as np

    import bovw

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"bovw {bovw.__version__}, numpy {np.__version__}"
    )


FULL_RUNS_HEADING = "## Full runs"


def splice(old: str, sections: dict[str, list[str]], full_runs: str | None, rerun: set[str]) -> str:
    """The file ``old`` with each ``## <name>`` section in ``sections``
    replaced (from its heading to the next ``## `` heading), new ones
    inserted before the full runs, the full runs replaced by ``full_runs``,
    and the failure sections (``## <stage>: FAILED``) of the stages in
    ``rerun`` dropped."""
    out: list[str] = []
    pending = dict(sections)
    lines = old.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = line[3:].strip() if line.startswith("## ") else None
        if heading is None:
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("## "):
            j += 1
        failed_stage = heading.removesuffix(": FAILED") if heading.endswith(": FAILED") else None
        if line.startswith(FULL_RUNS_HEADING) or (failed_stage in rerun and heading not in pending):
            pass  # the full runs are rewritten below; a rerun stage's old failure goes
        elif heading in pending:
            out += pending.pop(heading)
        else:
            out += lines[i:j]
        i = j
    for name in sorted(pending):
        out += pending[name]
    if full_runs:
        out += [full_runs, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs only")
    ap.add_argument("--only", nargs="*", default=None, help="stages to run (file suffixes)")
    ap.add_argument("--full", nargs="*", default=[], help="stages run on their full inputs even with --quick")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = ap.parse_args(argv)

    files = sorted((HERE / "py").glob("bench_*.py"))
    if args.only:
        files = [f for f in files if f.stem.removeprefix("bench_") in args.only]
    sections = []
    failures = []
    for f in files:
        name = f.stem.removeprefix("bench_")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            rows = _load(f).run(quick=args.quick and name not in args.full)
        except Exception:  # a broken bench must not hide the others' numbers
            failures.append((name, traceback.format_exc()))
            print(failures[-1][1], file=sys.stderr)
            continue
        for r in rows:
            print(
                f"  {r['case']:<40} ours {_fmt(r.get('ours_s'))} s  {r.get('reference', '')} "
                f"{_fmt(r.get('ref_s'))} s  x{_fmt(r.get('speedup'), 3)}",
                flush=True,
            )
        sections.append((name, rows, time.perf_counter() - t0))

    cmd = "python benches/run.py" + (" --quick" if args.quick else "") + (
        " --only " + " ".join(args.only) if args.only else ""
    ) + (" --full " + " ".join(args.full) if args.full else "")
    made = f"`{cmd}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}"
    blocks: dict[str, list[str]] = {}
    for name, rows, secs in sections:
        block = [f"## {name}", ""]
        if args.only:
            block += [f"_Made by {made}._", ""]
        block += ["| case | reference | bovw (s) | reference (s) | speedup | notes |", "|---|---|---:|---:|---:|---|"]
        for r in rows:
            block.append(
                f"| {r['case']} | {r.get('reference', '')} | {_fmt(r.get('ours_s'))} | {_fmt(r.get('ref_s'))} "
                f"| {_fmt(r.get('speedup'), 3)} | {r.get('notes', '')} |"
            )
        blocks[name] = block + ["", f"_{name}: {secs:.0f} s in all._", ""]
    for name, tb in failures:
        blocks[f"{name}: FAILED"] = [f"## {name}: FAILED", "", "```", tb.strip()[-2000:], "```", ""]
    full = HERE / "full_runs.md"
    full_runs = full.read_text().strip() if full.exists() else None
    out = Path(args.out)
    if args.only and out.exists():
        text = splice(out.read_text(), blocks, full_runs, {f.stem.removeprefix("bench_") for f in files})
    else:
        lines = [
            "# Benchmarks",
            "",
            f"Made by {made}; a section remade later by `--only` says so under its heading.",
            "",
            "Both sides run in the same process on the same real inputs (Fruits-360 images from",
            "`shared/fruits-360`, or the committed sample when it is absent). `speedup` is",
            "reference time / bovw time: above 1 means bovw is faster.",
            "",
        ]
        for block in blocks.values():
            lines += block
        text = splice("\n".join(lines), {}, full_runs, set())
    out.write_text(text)
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
