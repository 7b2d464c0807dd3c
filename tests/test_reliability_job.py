"""The job's outputs are safe (issue 17, findings 3 and 5; finding 4 is in
``test_engines.py``, the S3 faults in ``test_s3.py``).

- Two ``bovw run`` into one ``--out``: the second fails at once (exit 2, the
  lock message); the first's output is complete. Before the lock, 2 of 16
  such trials left an unreadable ``features.parquet`` and both exited 0.
- SIGINT or SIGKILL while the outputs are written or during the work: the
  previous run's files stay, byte for byte; no mixed set, no staging folder
  left after the next run.
- A run's outputs replace the previous run's whole set: no ``pca.npz`` after a
  ``--pca none`` run, no ``confusion_matrix.csv`` after a run without Test.
- ``--out`` a file, under a file, holding other files, not writable; an
  unreadable class folder; a missing folder: exit 2 with one line, before any
  work (the job's body never starts; nothing is written).
- Spark: a Python worker killed in the middle of the encode stage; Spark
  retries the task and the output equals the local engine's.

Real images: the committed Fruits-360 sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw
import bovw.job as job
from bovw.cli import main
from bovw.job import OutputError, OutputFolder, RunConfig, run, verify_outputs

HERE = Path(__file__).resolve().parent
PYTHON_DIR = Path(bovw.__file__).resolve().parents[1]
CLASSES = ("Banana", "Kiwi", "Lemon")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PYTHON_DIR), str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    return env


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, sample_root) -> Path:
    """Training/Test layout: 3 classes, 10 training and 4 test images each."""
    root = tmp_path_factory.mktemp("small") / "images"
    for split, n in (("Training", 10), ("Test", 4)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((sample_root / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def _cli(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(root), "--out", str(out), "--k", "8", "--pca", "3", "--max-iter", "20", "--no-progress",
            *extra]


def _snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every entry of a folder (sub-folders marked)."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
            for p in sorted(folder.iterdir())}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.bovw-"))


def _assert_complete(out: Path, *, k: int | None = None) -> dict:
    """``out`` holds one complete, readable run (whose vocabulary has ``k`` words)."""
    assert verify_outputs(str(out)) == []
    info = json.loads((out / "run.json").read_text())
    t = pq.read_table(out / "features.parquet")
    assert t.num_rows == info["counts"]["usable"]
    with open(out / "errors.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == info["counts"]["errors"]
    if k is not None:
        assert info["parameters"]["k"] == k and np.load(out / "vocabulary.npy").shape[0] == k
    assert len(t.column("features")[0].as_py()) == info["parameters"]["k"]
    return info


def _popen(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _paused(where: str, flags: Path, argv: list[str]) -> subprocess.Popen:
    flags.mkdir(parents=True, exist_ok=True)
    return _popen([str(HERE / "reliability_helpers.py"), "pause", where, str(flags), "--", *argv])


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path.name}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


# -- finding 3: two runs into one --out ---------------------------------------------------------

def test_second_concurrent_run_fails_fast_with_the_lock_message(small_root, tmp_path):
    """Run A holds the lock (stopped before writing); run B into the same
    --out exits 2 at once with one line; A then completes. Twice."""
    out = tmp_path / "out"
    for trial in range(2):
        flags = tmp_path / f"flags{trial}"
        a = _paused("before-write", flags, _cli(small_root, out, "--seed", str(trial)))
        _wait_file(flags / "paused-before-write", a)
        t0 = time.monotonic()
        b = subprocess.run([sys.executable, "-m", "bovw", *_cli(small_root, out)], env=_env(), capture_output=True,
                           text=True, timeout=300)
        b_seconds = time.monotonic() - t0
        (flags / "go").touch()
        a_out, a_err = a.communicate(timeout=300)
        assert a.returncode == 0, a_err
        assert b.returncode == 2 and b.stdout == "", (b.stdout, b.stderr)
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1 and "another bovw run" in lines[0] and f"pid {a.pid}" in lines[0], b.stderr
        assert b_seconds < 120  # it never waits for A (A was stopped until B had ended)
        info = _assert_complete(out, k=8)
        assert info["parameters"]["seed"] == trial  # A's run, not B's
        assert _leftovers(out) == []


def test_concurrent_runs_started_together(small_root, tmp_path):
    """Two runs started at the same moment, three times: each ends 0 or 2
    (the lock message), at least one ends 0, and --out is one complete run."""
    out = tmp_path / "out"
    for trial in range(3):
        procs = [_popen(["-m", "bovw", *_cli(small_root, out, "--seed", str(s))]) for s in (10 * trial, 10 * trial + 1)]
        results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
        codes = sorted(r[0] for r in results)
        assert codes in ([0, 0], [0, 2]), results
        print(f"\nfigures (two runs started together, trial {trial}): exit codes {[r[0] for r in results]}")
        for code, _, err in results:
            if code == 2:
                assert "another bovw run" in err and len(err.strip().splitlines()) == 1
        info = _assert_complete(out, k=8)
        assert info["parameters"]["seed"] in (10 * trial, 10 * trial + 1)
        assert _leftovers(out) == []


# -- finding 3: Ctrl-C and crashes keep the previous run ------------------------------------------

@pytest.fixture()
def previous_run(small_root, tmp_path):
    out = tmp_path / "out"
    assert main(_cli(small_root, out, "--k", "6")) == 0
    _assert_complete(out, k=6)
    return out, _snapshot(out)


def test_sigint_while_writing_keeps_the_previous_run(previous_run, small_root, tmp_path):
    out, before = previous_run
    flags = tmp_path / "flags"
    p = _paused("mid-write", flags, _cli(small_root, out))
    _wait_file(flags / "paused-mid-write", p)
    staging = [n for n in _leftovers(out) if "-tmp-" in n]
    assert len(staging) == 1 and {"features.parquet", "model.joblib"} <= set(os.listdir(out.parent / staging[0]))
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _snapshot(out) == before  # byte for byte, nothing added or removed
    assert _leftovers(out) == []  # staging folder removed, lock released and removed


def test_sigint_during_the_work_keeps_the_previous_run(previous_run, small_root, tmp_path):
    out, before = previous_run
    p = _popen(["-m", "bovw", *_cli(small_root, out, "--max-iter", "100", "--k", "20")])
    deadline = time.monotonic() + 300
    while not any("-tmp-" in n for n in _leftovers(out)):  # the run has passed its start-up checks
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_sigkill_while_writing_then_next_run_recovers(previous_run, small_root, tmp_path):
    out, before = previous_run
    flags = tmp_path / "flags"
    p = _paused("mid-write", flags, _cli(small_root, out))
    _wait_file(flags / "paused-mid-write", p)
    p.kill()
    p.communicate(timeout=60)
    assert _snapshot(out) == before
    left = _leftovers(out)
    assert any("-tmp-" in n for n in left)  # killed mid-write: its staging folder is still there
    # the next run takes the lock the dead one held, removes its staging folder and replaces the set
    assert main(_cli(small_root, out, "--k", "7")) == 0
    _assert_complete(out, k=7)
    assert _leftovers(out) == []


# -- finding 3: no stale file of an earlier run ----------------------------------------------------

def test_a_run_replaces_the_whole_previous_set(small_root, tmp_path):
    out = tmp_path / "out"
    run(RunConfig(method="sift", root=str(small_root), out=str(out), k=6, pca=3, max_iter=20, progress=False))
    assert (out / "pca.npz").is_file() and (out / "confusion_matrix.csv").is_file()
    run(RunConfig(method="sift", root=str(small_root), out=str(out), k=6, pca=None, max_iter=20, progress=False))
    assert not (out / "pca.npz").exists()
    info = _assert_complete(out, k=6)
    assert "pca.npz" not in info["outputs"] and info["pca"] is None
    # a layout without Test: no confusion matrix, and none left from the run before
    train_only = tmp_path / "train-only"
    shutil.copytree(small_root / "Training", train_only / "Training")
    run(RunConfig(method="sift", root=str(train_only), out=str(out), k=6, pca=3, max_iter=20, progress=False))
    assert not (out / "confusion_matrix.csv").exists()
    _assert_complete(out, k=6)
    assert _leftovers(out) == []


def test_an_other_file_in_out_is_never_deleted(small_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_cli(small_root, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0] and "did not write" in err[0]
    assert os.listdir(out) == ["notes.txt"] and _leftovers(out) == []


# -- the output folder's swap and its recovery --------------------------------------------------

def _write_set(folder: Path, tag: str) -> None:
    (folder / "features.parquet").write_text(tag)
    (folder / "run.json").write_text(json.dumps({"outputs": {"features.parquet": {}}, "tag": tag}))


@pytest.mark.parametrize("exchange", [True, False])
def test_commit_swaps_the_whole_folder(tmp_path, exchange):
    out = tmp_path / "out"
    out.mkdir()
    _write_set(out, "old")
    (out / "pca.npz").write_text("stale")
    with OutputFolder(out, exchange=exchange) as f:
        assert f.staging.parent == tmp_path and f.staging.name.startswith(".out.bovw-tmp-")
        assert (tmp_path / ".out.bovw-lock").read_text().startswith(f"pid {os.getpid()} ")
        _write_set(f.staging, "new")
        f.commit()
    assert sorted(os.listdir(out)) == ["features.parquet", "run.json"]
    assert json.loads((out / "run.json").read_text())["tag"] == "new"
    assert os.listdir(tmp_path) == ["out"]  # no staging, old or lock file left


def test_rename_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not job.rename_exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not supported by this kernel or file system (fallback tested)")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        job.rename_exchange(a, tmp_path / "missing")


def test_interrupt_between_the_two_renames_puts_the_previous_run_back(tmp_path, monkeypatch):
    """Without renameat2: Ctrl-C after ``out -> old`` and before ``staging ->
    out``; close() renames the old folder back."""
    out = tmp_path / "out"
    out.mkdir()
    _write_set(out, "old")
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_rename(a, b)

    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out, exchange=False) as f:
            _write_set(f.staging, "new")
            monkeypatch.setattr(os, "rename", rename)
            f.commit()
    monkeypatch.undo()
    assert Path(calls[0][1]).name.startswith(".out.bovw-old-")
    assert json.loads((out / "run.json").read_text())["tag"] == "old"
    assert os.listdir(tmp_path) == ["out"]


def test_a_killed_swap_is_repaired_at_the_next_start(tmp_path):
    """What SIGKILL between the two renames leaves (no out, an old folder, a
    staging folder) is repaired under the lock by the next run."""
    out = tmp_path / "out"
    old = tmp_path / ".out.bovw-old-123-abcd0123"
    staging = tmp_path / ".out.bovw-tmp-123-abcd0123"
    old.mkdir()
    staging.mkdir()
    _write_set(old, "old")
    _write_set(staging, "new")
    (tmp_path / ".out.bovw-lock").write_text("pid 123")  # a dead run's lock file: not locked
    (tmp_path / ".outx.bovw-tmp-1-ab").mkdir()  # another --out's: left alone
    with OutputFolder(out) as f:
        assert json.loads((out / "run.json").read_text())["tag"] == "old"  # put back at the start
        assert not staging.exists() and not old.exists()
        _write_set(f.staging, "newer")
        f.commit()
    assert json.loads((out / "run.json").read_text())["tag"] == "newer"
    assert sorted(os.listdir(tmp_path)) == [".outx.bovw-tmp-1-ab", "out"]


def test_out_through_a_symbolic_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    _write_set(real, "old")
    (tmp_path / "link").symlink_to(real)
    with OutputFolder(tmp_path / "link") as f:
        _write_set(f.staging, "new")
        f.commit()
    assert (tmp_path / "link").is_symlink()
    assert json.loads((real / "run.json").read_text())["tag"] == "new"


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out).open()
    with pytest.raises(OutputError, match=f"another bovw run \\(pid {os.getpid()} "):
        OutputFolder(out).open()
    assert first.staging.is_dir()  # the refused one did not touch the holder's staging folder
    first.close()
    with OutputFolder(out):
        pass
    assert os.listdir(tmp_path) == []


# -- finding 5: checks before any work, exit 2 with one line ------------------------------------

@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if the job's body (engine, listing...) starts."""
    def body(*a, **k):
        raise AssertionError("the job started its work")

    monkeypatch.setattr(job, "_run", body)


def _one_line_error(capsys) -> str:
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and len(lines) == 1 and lines[0].startswith("bovw: error: "), cap
    return lines[0]


def test_out_that_is_a_file(small_root, tmp_path, capsys, no_work):
    f = tmp_path / "out"
    f.write_text("a file")
    t0 = time.monotonic()
    assert main(_cli(small_root, f)) == 2
    assert time.monotonic() - t0 < 10
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert f.read_text() == "a file" and sorted(os.listdir(tmp_path)) == ["out"]


def test_out_under_a_file(small_root, tmp_path, capsys, no_work):
    (tmp_path / "f").write_text("a file")
    assert main(_cli(small_root, tmp_path / "f" / "out")) == 2
    assert "a file is in the way" in _one_line_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_missing_image_folder(tmp_path, capsys, no_work):
    assert main(_cli(tmp_path / "nothing", tmp_path / "out")) == 2
    assert "image folder not found" in _one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def _obeys_permissions(tmp_path: Path) -> bool:
    """Whether a subprocess started with drop_dac_capabilities is refused a chmod 000 folder."""
    d = tmp_path / "probe"
    d.mkdir()
    d.chmod(0)
    try:
        from reliability_helpers import drop_dac_capabilities

        r = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(d)!r})"], capture_output=True,
                           preexec_fn=drop_dac_capabilities)
        return r.returncode != 0 and b"PermissionError" in r.stderr
    except OSError:
        return False
    finally:
        d.chmod(0o755)
        d.rmdir()


def _cli_subprocess(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    from reliability_helpers import drop_dac_capabilities

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bovw", *argv], env=_env(), capture_output=True, text=True,
                       timeout=300, preexec_fn=drop_dac_capabilities)
    return r, time.monotonic() - t0


def test_permissions_unreadable_class_folder_and_read_only_out(small_root, tmp_path):
    """As root, ``chmod`` does not stop reading or writing; the subprocess runs
    without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH so that it does."""
    if not _obeys_permissions(tmp_path):
        pytest.skip("cannot start a process that obeys file permissions here (no CAP_SETPCAP)")
    root = tmp_path / "images"
    shutil.copytree(small_root, root)
    _, base_s = _cli_subprocess(["--version"])  # the interpreter and bovw's import: the floor of any run

    def check(r: subprocess.CompletedProcess, seconds: float, words: str) -> None:
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r
        assert words in lines[0], lines[0]
        assert seconds < base_s + 30  # no work: about as long as starting Python and importing bovw

    # an unreadable class folder, found before any work, named
    (root / "Test" / "Kiwi").chmod(0)
    try:
        r, s = _cli_subprocess(_cli(root, tmp_path / "out"))
    finally:
        (root / "Test" / "Kiwi").chmod(0o755)
    check(r, s, f"cannot list folder {str(root / 'Test' / 'Kiwi')!r}: Permission denied")
    assert not (tmp_path / "out").exists()
    # --out in a read-only folder
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r, s = _cli_subprocess(_cli(root, ro / "out"))
    finally:
        ro.chmod(0o755)
    check(r, s, f"cannot write in {str(ro)!r}")
    assert os.listdir(ro) == []
    # an existing --out (a previous run) that is read-only
    out = tmp_path / "out"
    assert main(_cli(root, out)) == 0
    before = _snapshot(out)
    out.chmod(0o555)
    try:
        r, s = _cli_subprocess(_cli(root, out))
    finally:
        out.chmod(0o755)
    check(r, s, "is not writable")
    assert _snapshot(out) == before and _leftovers(out) == []


# -- Spark: a worker killed in the middle of the encode stage ----------------------------------

@pytest.mark.spark
def test_spark_worker_killed_mid_stage_gives_the_same_output(small_root, tmp_path):
    """A Python worker exits (os._exit) while encoding one Test image; Spark
    (``local[2,4]``: 4 attempts per task) retries the task. Features, errors
    and vocabulary equal the local engine's."""
    trigger = sorted((small_root / "Test" / "Kiwi").glob("*.jpg"))[1]
    sha = hashlib.sha256(trigger.read_bytes()).hexdigest()
    marker = tmp_path / "crashed"
    code = (f"import reliability_helpers as h; h.spark_crash_job({str(small_root)!r}, {str(tmp_path / 'spark')!r}, "
            f"{str(marker)!r}, {sha!r})")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.read_text().startswith("pid ")  # a worker did exit in the middle of the stage
    attempts = Path(str(marker) + ".calls").read_text().split()
    assert attempts and attempts[0] == "attempt" and int(attempts[1]) >= 1  # and the task was retried
    run(RunConfig(method="sift", root=str(small_root), out=str(tmp_path / "local"), k=16, pca=6, max_iter=20, seed=3,
                  progress=False))
    a, b = tmp_path / "local", tmp_path / "spark"
    _assert_complete(b, k=16)
    ta, tb = pq.read_table(a / "features.parquet"), pq.read_table(b / "features.parquet")
    assert tb.num_rows == ta.num_rows == 42
    for col in ("path", "label", "split", "n_keypoints", "features", "prediction"):
        assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), col
    np.testing.assert_allclose(np.array(ta.column("pca_features").to_pylist()),
                               np.array(tb.column("pca_features").to_pylist()), rtol=1e-5, atol=1e-5)
    assert (a / "errors.csv").read_text() == (b / "errors.csv").read_text()
    np.testing.assert_array_equal(np.load(a / "vocabulary.npy"), np.load(b / "vocabulary.npy"))
    ja, jb = json.loads((a / "run.json").read_text()), json.loads((b / "run.json").read_text())
    assert ja["input"] == jb["input"] and ja["counts"] == jb["counts"] and ja["accuracy"] == jb["accuracy"]
