"""Nothing lost: checkpoint paths held by one run at a time, leftovers of killed writes, the best model kept."""

from __future__ import annotations

import dataclasses
import fcntl
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from se3pyg.engine.checkpoint import best_path, load_checkpoint, save_checkpoint
from se3pyg.engine.config import PredictConfig, TrainConfig
from se3pyg.engine.predict import run_predict
from se3pyg.engine.train import run
from se3pyg.io import check_writable, exclusive_use, exclusive_writes

from .conftest import QM9_SUBSET, TINY_MODEL, TINY_MODEL_ARGS

TINY = dict(**TINY_MODEL, batch_size=16, limit=QM9_SUBSET)


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _config(qm9_dir: Path, tmp_path: Path, **options: object) -> TrainConfig:
    return TrainConfig(**{**TINY, **options}, data_dir=str(qm9_dir), tracking_uri=f"sqlite:///{tmp_path}/m.db")


def _holder(path: Path) -> subprocess.Popen:
    """A live process holding ``path`` through :func:`exclusive_use` until it is killed."""
    code = "import sys, time\nfrom se3pyg.io import exclusive_use\nwith exclusive_use(sys.argv[1], 'x'):\n"
    code += "    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_checkpoint_path_held_by_a_live_run_is_refused(qm9_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    lock = tmp_path / ".model.pt.lock"
    holder = _holder(ckpt)
    try:
        with pytest.raises(ValueError, match=rf"--save-ckpt-path {ckpt}: in use by process {holder.pid}"):
            run(_config(qm9_dir, tmp_path, epochs=1, save_ckpt_path=str(ckpt)))
    finally:
        holder.kill()
        holder.wait()
    assert not ckpt.exists()
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}")  # left by a killed run: held by nobody
    assert run(_config(qm9_dir, tmp_path, epochs=1, save_ckpt_path=str(ckpt))) is not None
    assert ckpt.is_file() and not lock.exists()  # released at the end


def test_every_file_a_command_replaces_is_held_while_it_runs(qm9_dir: Path, tmp_path: Path) -> None:
    """A training holds its checkpoint and its best one, and predict its --output: another command writing any of
    them, by whatever name, is refused naming the holder (flocks taken by another descriptor, as by another
    process), and nothing of the holder's is replaced."""
    trained = tmp_path / "trained.pt"
    run(_config(qm9_dir, tmp_path, epochs=1, save_ckpt_path=str(trained)))
    x = tmp_path / "x.pt"
    x.write_text("x's\n")
    best = tmp_path / "x.best.pt"
    link = tmp_path / "link.csv"
    link.symlink_to(x)
    molecule = tmp_path / "water.xyz"
    molecule.write_text("3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n")
    holder = f"in use by process {os.getpid()} on {socket.gethostname()}"
    with exclusive_writes(_config(qm9_dir, tmp_path, save_ckpt_path=str(x)).checkpoints_written()[:2]):
        with pytest.raises(ValueError, match=rf"--save-ckpt-path {best}: {holder}"):
            run(_config(qm9_dir, tmp_path, epochs=1, save_ckpt_path=str(best)))
        for output in (x, link):
            with pytest.raises(ValueError, match=rf"--output {output}: {holder}"):
                run_predict(PredictConfig(ckpt=str(trained), input=[str(molecule)], output=str(output), gpus=0))
    assert x.read_text() == "x's\n" and not best.exists()
    run_predict(PredictConfig(ckpt=str(trained), input=[str(molecule)], output=str(link), gpus=0))
    assert x.read_text().startswith("molecule,")  # released: the link's target is written, the link kept
    assert link.is_symlink()


def test_a_lock_held_before_its_holder_has_written_it_is_not_taken_for_stale(tmp_path: Path) -> None:
    """Between a holder's lock and its write the lock file is empty: that is a live holder, not a stale file."""
    lock = tmp_path / ".model.pt.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held (another open file, as another process's), nothing written yet
    try:
        with (
            pytest.raises(ValueError, match=r"model\.pt: in use by another process"),
            exclusive_use(tmp_path / "model.pt", "--save-ckpt-path"),
        ):
            pass
        assert lock.exists()
    finally:
        os.close(fd)


def _hold_at_once(path: str, start: Any, spans: Any) -> None:
    start.wait()
    try:
        with exclusive_use(path, "--save-ckpt-path"):
            began = time.monotonic()
            time.sleep(0.02)
            spans.put((began, time.monotonic()))
    except ValueError:
        spans.put(None)


@pytest.mark.slow
def test_simultaneous_holders_never_overlap(tmp_path: Path) -> None:
    """Pairs of processes asking for one path at the same instant: the holds never overlap in time."""
    context = multiprocessing.get_context("fork")
    held = 0
    for k in range(40):
        start, spans = context.Barrier(2), context.Queue()
        pair = [context.Process(target=_hold_at_once, args=(str(tmp_path / f"m{k}.pt"), start, spans)) for _ in "ab"]
        for process in pair:
            process.start()
        got = [spans.get(timeout=30) for _ in pair]
        for process in pair:
            process.join()
        holds = sorted(span for span in got if span is not None)
        held += len(holds)
        assert len(holds) < 2 or holds[0][1] <= holds[1][0], f"pair {k}: two holders at once {holds}"
    assert held >= 40  # each pair had a holder


def test_a_checkpoint_path_whose_folder_takes_no_files_is_refused_by_name() -> None:
    """Permission bits say nothing for root or /proc: the check makes a file there (and removes it), and the
    lock's own failure to be made is a refusal too."""
    with pytest.raises(ValueError, match=r"--save-ckpt-path /proc/model.pt: cannot write in /proc \("):
        check_writable("/proc/model.pt", "--save-ckpt-path")
    refused = r"--save-ckpt-path /proc/model.pt: cannot write its lock /proc/.model.pt.lock \("
    with pytest.raises(ValueError, match=refused), exclusive_use("/proc/model.pt", "--save-ckpt-path"):
        pass


def test_the_writability_check_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "sub" / "model.pt", "--save-ckpt-path")
    assert [p.name for p in tmp_path.rglob("*")] == ["sub"]


@pytest.mark.slow
def test_temporaries_of_killed_writes_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """A killed write's temporary file, and SQLite's journal of a store a killed command was creating, are removed
    by the next write; a live process's are left alone."""
    ckpt = tmp_path / "model.pt"
    pid = _dead_pid()
    dead = [tmp_path / f".model.pt.tmp-{pid}", tmp_path / f".model.pt.tmp-{pid}-journal"]
    live = tmp_path / ".model.pt.tmp-1"  # pid 1 is alive: a write in progress elsewhere is left alone
    for partial in (*dead, live, tmp_path / ".model.pt.tmp-1-wal"):
        partial.write_bytes(b"partial")
    save_checkpoint(ckpt, {"epoch": 0})
    assert load_checkpoint(ckpt)["epoch"] == 0
    assert not any(d.exists() for d in dead) and live.exists() and (tmp_path / ".model.pt.tmp-1-wal").exists()


def test_resume_replaces_the_best_checkpoint_only_with_a_better_model(qm9_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    run(_config(qm9_dir, tmp_path, epochs=1, eval_interval=1, save_ckpt_path=str(ckpt)))
    best = load_checkpoint(best_path(ckpt))
    best["best_val_mae"] = 1e-9  # a better model than any this run will train (as after a kill between saves)
    save_checkpoint(best_path(ckpt), {k: v for k, v in best.items() if k not in ("format", "version")})
    before = best_path(ckpt).read_bytes()
    resumed = run(_config(qm9_dir, tmp_path, epochs=3, eval_interval=1, load_ckpt_path=str(ckpt),
                          save_ckpt_path=str(ckpt)))  # fmt: skip
    assert resumed is not None and resumed.epochs_run == 2
    assert best_path(ckpt).read_bytes() == before
    assert load_checkpoint(ckpt)["epoch"] == 2 and torch.isfinite(torch.tensor(resumed.test_mae))


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def _kill_9_and_survivors(proc: subprocess.Popen, at_least: int, timeout: float = 120) -> list[int]:
    """Wait for ``at_least`` children of ``proc``, kill -9 it, and return the children still alive 30 s later."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while len(_children(proc.pid)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    children = _children(proc.pid)
    assert len(children) >= at_least, f"{len(children)} child processes seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [c for c in children if Path(f"/proc/{c}").exists()]


@pytest.mark.slow
def test_kill_9_during_data_prepare_leaves_no_worker_and_the_next_build_cleans_up(tmp_path: Path) -> None:
    import sys

    root = tmp_path / "qm9"
    proc = subprocess.Popen(
        [sys.executable, "-m", "se3pyg", "data", "prepare", "--data-dir", str(root), "--limit", "8000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().startswith("perceiving bonds")
    assert not _kill_9_and_survivors(proc, at_least=2), "bond-perception workers outlived the killed build"
    assert list(root.glob(".build-*"))  # the killed build's scratch folder
    done = subprocess.run(
        [sys.executable, "-m", "se3pyg", "data", "prepare", "--data-dir", str(root), "--limit", "20"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not list(root.glob(".build-*"))


@pytest.mark.slow
def test_an_unreachable_store_is_reported_before_the_data_build(tmp_path: Path) -> None:
    from .conftest import run_se3pyg

    data = tmp_path / "qm9"
    done = run_se3pyg("train", "--data-dir", str(data), "--limit", "300", "--batch-size", "16", "--gpus", "0",
                      "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "http://127.0.0.1:9 is unreachable" in done.stderr
    assert not data.exists()  # nothing was built first


@pytest.mark.slow
def test_two_runs_on_one_checkpoint_path_and_a_killed_launcher(qm9_dir: Path, tmp_path: Path) -> None:
    """A second training on a live run's checkpoint path is refused; kill -9 of a DDP launcher takes its
    ranks with it, and its stale lock no longer blocks the path."""
    from .conftest import run_se3pyg

    ckpt = tmp_path / "model.pt"
    common = ["train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "16", "--gpus", "0",
              *TINY_MODEL_ARGS,
              "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--save-ckpt-path", str(ckpt)]  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "se3pyg", *common, "--epochs", "1000", "--processes", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    lock = tmp_path / ".model.pt.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = run_se3pyg(*common, "--epochs", "1", cwd=tmp_path)
    assert second.returncode == 2 and f"--save-ckpt-path {ckpt}: in use by process {first.pid}" in second.stderr
    assert not _kill_9_and_survivors(first, at_least=2), "DDP ranks outlived their launcher"
    third = run_se3pyg(*common, "--epochs", "1", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert load_checkpoint(ckpt)["epoch"] == 0 and not lock.exists()


def test_a_resume_keeps_its_molecules_and_optimizer_and_applies_given_settings(qm9_dir: Path, tmp_path: Path) -> None:
    """Another --limit would split the molecules anew (test molecules trained on, old statistics): taken from the
    checkpoint when left out, refused when different, as is another optimizer, before any work. A learning rate or
    weight decay given runs, and is what is logged."""
    ckpt = tmp_path / "model.pt"
    run(_config(qm9_dir, tmp_path, epochs=1, limit=200, save_ckpt_path=str(ckpt)))
    for options, refused in [
        (dict(limit=QM9_SUBSET), rf"--limit {QM9_SUBSET}: .*model\.pt was trained with 200; a resume keeps"),
        (dict(limit=200, optimizer="sgd"), r"--optimizer sgd: .*model\.pt was trained with 'adam'"),
    ]:
        with pytest.raises(ValueError, match=refused):
            run(_config(qm9_dir, tmp_path, epochs=3, load_ckpt_path=str(ckpt), **options))
    resumed = run(dataclasses.replace(
        _config(qm9_dir, tmp_path, epochs=3, load_ckpt_path=str(ckpt), save_ckpt_path=str(ckpt), learning_rate=0.01,
                weight_decay=0.05), limit=None,
    ))  # fmt: skip
    assert resumed is not None and resumed.epochs_run == 2
    saved = load_checkpoint(ckpt)
    group = saved["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], group["weight_decay"]) == (0.01, 0.05)
    assert saved["config"]["limit"] == 200 and saved["config"]["learning_rate"] == 0.01
    params = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(resumed.run_id).data.params
    assert (params["limit"], params["learning_rate"], params["n_train"]) == ("200", "0.01", "153")


@pytest.mark.slow
def test_a_dataset_changed_since_training_is_named_not_silently_used(tmp_path: Path) -> None:
    """A checkpoint records its --dataset as an absolute path with its digest: evaluating elsewhere reads that file,
    and a file changed since is refused, for evaluation and for a resume."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    def sdf(path: Path, smiles: list[str]) -> None:
        with Chem.SDWriter(str(path)) as writer:
            for k, smi in enumerate(smiles):
                mol = Chem.AddHs(Chem.MolFromSmiles(smi))
                AllChem.EmbedMolecule(mol, randomSeed=k)
                mol.SetProp("y", str(k % 3))
                writer.write(mol)

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    many = ["CCO", "CCN", "CCC", "CO", "CN", "CC=O", "CCCO", "CCCN", "OCCO", "NCCN", "CC(C)O", "CC(C)N"] * 3
    sdf(work / "mols.sdf", many)
    sdf(elsewhere / "mols.sdf", many[:12])  # another file of the same name, where predict runs
    config = dict(TINY, batch_size=4, limit=None, gpus=0, epochs=1, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    os.chdir(work)
    try:
        run(TrainConfig(**config, dataset="mols.sdf", target="y", save_ckpt_path=str(tmp_path / "m.pt")))
    finally:
        os.chdir(tmp_path)
    assert load_checkpoint(tmp_path / "m.pt")["config"]["dataset"] == str(work / "mols.sdf")
    from .conftest import run_se3pyg

    done = run_se3pyg("predict", "--ckpt", str(tmp_path / "m.pt"), "--gpus", "0",
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=elsewhere)  # fmt: skip
    assert done.returncode == 0 and "on 3 molecules" in done.stdout, done.stderr  # the trained-on file's test split
    sdf(work / "mols.sdf", many[::-1])
    done = run_se3pyg("predict", "--ckpt", str(tmp_path / "m.pt"), "--gpus", "0",
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=elsewhere)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        f"{work / 'mols.sdf'}: not the dataset the checkpoint was trained on (its files changed since)" in done.stderr
    )
    with pytest.raises(ValueError, match=r"mols\.sdf: changed since .*m\.pt was trained on it"):
        run(TrainConfig(**{**config, "epochs": 2}, load_ckpt_path=str(tmp_path / "m.pt")))


def _stopped(
    command: list[str], cwd: Path, ready: Callable[[str], bool], signals: tuple[int, ...] = (signal.SIGTERM,)
) -> subprocess.CompletedProcess:
    """``se3pyg COMMAND`` sent ``signals`` (one after the other) once a line of its output satisfies ``ready``."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "se3pyg", *command], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if ready(line):
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.05)
            break
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(seen) + out, err)


def _train_command(qm9_dir: Path, tmp_path: Path) -> list[str]:
    return ["train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "16", "--gpus", "0",
            *TINY_MODEL_ARGS, "--epochs", "1",
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--save-ckpt-path", str(tmp_path / "model.pt")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_after_the_last_epoch_ends_with_a_line_a_killed_run_and_no_lock(
    qm9_dir: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """Stopped while testing, reporting or logging the model: one line, exit 128 + the signal, the run KILLED,
    the lock gone."""
    done = _stopped(_train_command(qm9_dir, tmp_path), tmp_path, lambda line: line.startswith("epoch 0  train_loss"),
                    (stop,))  # fmt: skip
    assert done.returncode == 128 + stop, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: interrupted by {stop.name}", done.stderr
    assert "Traceback" not in done.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    (killed,) = client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id])
    assert killed.info.status == "KILLED"
    assert not (tmp_path / ".model.pt.lock").exists() and load_checkpoint(tmp_path / "model.pt")["epoch"] == 0


@pytest.mark.slow
def test_a_stop_while_a_training_starts_ends_with_a_line(qm9_dir: Path, tmp_path: Path) -> None:
    """SIGTERM a second after ``se3pyg train`` starts (its libraries loading): one line, exit 143, no run left
    RUNNING."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "se3pyg", *_train_command(qm9_dir, tmp_path)], cwd=tmp_path,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in err
    if (tmp_path / "m.db").exists():
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
        experiment = client.get_experiment_by_name("se3pyg")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        assert all(r.info.status == "KILLED" for r in runs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGQUIT,), (signal.SIGINT, signal.SIGINT)],
    ids=["SIGTERM", "SIGQUIT", "two-SIGINT"],
)
def test_a_stop_in_a_qm9_build_removes_its_scratch_and_lock(tmp_path: Path, signals: tuple[signal.Signals]) -> None:
    """A stop signal (or Ctrl-C twice) while QM9 builds: one line, exit 128 + the signal, no traceback (no
    worker's either), nothing of the build left."""
    root = tmp_path / "qm9"
    done = _stopped(["data", "prepare", "--data-dir", str(root), "--limit", "20000"], tmp_path,
                    lambda line: line.startswith("perceiving bonds"), signals)  # fmt: skip
    assert done.returncode == 128 + signals[0], done.stderr
    assert done.stderr.strip() == f"error: interrupted by {signals[0].name}"
    assert sorted(p.name for p in root.iterdir()) == []  # no .build-PID, no lock, no half build


def _with_file_size_limit(limit: int) -> Callable[[], None]:
    """A child's set-up that makes every write past ``limit`` bytes fail with EFBIG, as a full disk does."""

    def limited() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


@pytest.mark.slow
def test_a_full_disk_ends_each_command_as_one_line_and_keeps_what_was_there(qm9_dir: Path, tmp_path: Path) -> None:
    """Checkpoint saves, predictions and a QM9 build on a disk that fills: one line naming the file, no traceback,
    the previous checkpoint whole, no scratch left."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONUNBUFFERED": "1"}

    def se3pyg(*args: str, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "se3pyg", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300, preexec_fn=_with_file_size_limit(limit))  # fmt: skip

    ckpt = tmp_path / "model.pt"
    train = ["train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "16", "--gpus", "0",
             *TINY_MODEL_ARGS, "--epochs", "1",
             "--no-tracking", "--save-ckpt-path", str(ckpt)]  # fmt: skip
    assert se3pyg(*train, limit=1 << 30).returncode == 0
    before = ckpt.read_bytes()
    done = se3pyg(*train, "--num-channels", "16", limit=len(before) // 2)  # a larger model's checkpoint: no room
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{ckpt.with_name('model.best.pt')}: cannot be written, the previous file is kept" in done.stderr
    assert ckpt.read_bytes() == before and not list(tmp_path.glob(".model*.tmp-*"))

    molecule = tmp_path / "water.xyz"
    molecule.write_text("3\nwater\nO 0.0 0.0 0.117\nH 0.0 0.757 -0.467\nH 0.0 -0.757 -0.467\n")
    out = tmp_path / "out.csv"
    done = se3pyg("predict", "--ckpt", str(ckpt), "--input", str(molecule), "--output", str(out), limit=20)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"error: --output {out}: cannot be written (File too large)" and not out.exists()

    done = se3pyg("data", "prepare", "--data-dir", str(tmp_path / "qm9"), "--limit", "2000", limit=100_000)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "the QM9 build could not be written (File too large)" in done.stderr
    assert not list((tmp_path / "qm9").glob(".build-*"))


@pytest.mark.slow
def test_a_killed_ddp_rank_ends_the_run_as_one_line(qm9_dir: Path, tmp_path: Path) -> None:
    """kill -9 of one spawned rank: the command says which rank and how, once, without the other rank's traceback."""
    command = ["train", "--data-dir", str(qm9_dir), "--limit", str(QM9_SUBSET), "--batch-size", "16", "--gpus", "0",
               *TINY_MODEL_ARGS, "--epochs", "1000",
               "--processes", "2", "--no-tracking"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "se3pyg", *command], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("epoch 0  train_loss"):
            break
    ranks = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    os.kill(sorted(ranks)[-1], signal.SIGKILL)  # rank 1, started second
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "error: rank 1 was ended by SIGKILL; the run stopped"


@pytest.mark.slow
def test_scratch_of_a_killed_command_is_removed_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command's temporary files (its own, MLflow's, torch's workers') live in one folder per process; the next
    command removes the folders of processes that are gone, and keeps those of live ones."""
    import tempfile

    from se3pyg.processes import SCRATCH_PREFIX, use_own_scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    dead = tmp_path / f"{SCRATCH_PREFIX}{_dead_pid()}"
    (dead / "se3pyg-model-x").mkdir(parents=True)
    (dead / "pymp-y").mkdir()
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getppid()}"
    live.mkdir()
    other = tmp_path / "not-se3pyg"
    other.mkdir()
    own = use_own_scratch()
    assert own == tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}" and own.is_dir()
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert tempfile.gettempdir() == os.environ["TMPDIR"] == str(own)


@pytest.mark.slow
def test_a_stop_to_a_ddp_launcher_reaches_its_ranks_and_ends_with_one_line(qm9_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to the launcher of two ranks, in their first epoch: passed on, the ranks stop together, the run is
    KILLED, the launcher ends with one line and exit 143, and nothing of the ranks is left."""
    command = [*_train_command(qm9_dir, tmp_path), "--processes", "2", "--epochs", "50"]
    done = _stopped(command, tmp_path, lambda line: line.startswith("epoch 1"))
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted") and "Traceback" not in done.stderr, done.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    (killed,) = client.search_runs([client.get_experiment_by_name("se3pyg").experiment_id])
    assert killed.info.status == "KILLED"
    assert not (tmp_path / ".model.pt.lock").exists()
