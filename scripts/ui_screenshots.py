"""The MLflow UI as a user sees it, for docs/mlflow.md: a run's curves, its parity plot, two runs compared.

Trains two small runs (a learning rate apart) on the first QM9 molecules into a fresh store, serves it with
``se3pyg ui``, and photographs three pages with headless Chromium (the browser tests/test_ui.py drives)::

    python scripts/ui_screenshots.py                       # writes docs/images/mlflow-*.png
    python scripts/ui_screenshots.py --out /tmp/shots --data-dir data/qm9

Needs Chromium (Debian's ``chromium``) and a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--num-layers", "2", "--num-degrees", "2", "--num-channels", "16", "--num-heads", "4", "--gpus", "0"]
RUNS = {"homo-lr-0.002": "0.002", "homo-lr-0.005": "0.005"}
#: The pictures, by file: the page (relative to the UI's root) and the window's size.
PAGES = {
    "mlflow-run-curves.png": ("#/experiments/{experiment}/runs/{run}/model-metrics", "1400,1000"),
    "mlflow-parity-plot.png": ("#/experiments/{experiment}/runs/{run}/artifacts/parity_test.png", "1400,1000"),
    "mlflow-compare-runs.png": ('#/compare-runs?runs=[{runs}]&experiments=["{experiment}"]', "1400,1200"),
}


def _se3pyg(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "se3pyg", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def train_runs(work: Path, data_dir: Path, uri: str, limit: int, epochs: int) -> None:
    """The two runs the pictures show, validated every epoch."""
    for name, lr in RUNS.items():
        _se3pyg("train", "--data-dir", str(data_dir), "--limit", str(limit), "--epochs", str(epochs),
                "--eval-interval", "1", "--batch-size", "32", "--lr", lr, "--run-name", name, "--tracking-uri", uri,
                "--no-system-metrics", *TINY, cwd=work)  # fmt: skip


def photograph(chromium: str, url: str, size: str, path: Path, profile: Path) -> None:
    """``url`` as headless Chromium renders it after 60 s of page time, as a PNG at ``path``."""
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=60000",
            "--run-all-compositor-stages-before-draw",
            f"--screenshot={path}", url,
        ],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    parser.add_argument("--data-dir", type=Path, help="a QM9 folder of at least 2,000 molecules (else built)")
    parser.add_argument("--work", type=Path, help="keep the runs in this folder (reused when it has them)")
    parser.add_argument("--limit", type=int, default=2000, help="QM9 molecules the runs train on")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each run")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: Chromium is not installed (Debian: apt install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="se3pyg-screenshots-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work}/mlruns/mlflow.db"
        if not (work / "mlruns" / "mlflow.db").is_file():
            train_runs(work, (args.data_dir or work / "qm9").resolve(), uri, args.limit, args.epochs)
        import mlflow

        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("se3pyg").experiment_id
        runs = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment])}
        from se3pyg.engine.distributed import free_port

        port = free_port()
        ui = subprocess.Popen([sys.executable, "-m", "se3pyg", "ui", "--tracking-uri", uri, "--port", str(port)],
                              cwd=work, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            ui.stdout.readline()  # printed once the server answers
            fields = {"experiment": experiment, "run": runs["homo-lr-0.002"],
                      "runs": ",".join(f'"{r}"' for r in runs.values())}  # fmt: skip
            for name, (page, size) in PAGES.items():
                url = f"http://127.0.0.1:{port}/se3pyg/{page.format(**fields)}"
                photograph(chromium, url, size, args.out / name, work / "chromium")
                print(args.out / name)
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=60)


if __name__ == "__main__":
    main()
