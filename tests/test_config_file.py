"""``se3pyg train --config``: options from TOML, YAML or JSON, or a logged run's config.json; typed ones win."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from se3pyg.engine.config import TrainConfig
from se3pyg.engine.config_file import options_from_file
from se3pyg.engine.train import run

from .conftest import QM9_SUBSET, TINY_MODEL, run_se3pyg

OPTIONS = {"epochs": 3, "batch_size": 16, "learning_rate": 0.001, "amp": False, "gradient_clip": None, "task": "gap"}


def test_toml_yaml_and_json_set_the_same_options(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in OPTIONS.items()}))
    (tmp_path / "run.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in OPTIONS.items()))
    toml = {k: v for k, v in OPTIONS.items() if v is not None}  # TOML has no null: an option left out
    (tmp_path / "run.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in toml.items()))
    assert options_from_file(TrainConfig, str(tmp_path / "run.json")) == OPTIONS
    assert options_from_file(TrainConfig, str(tmp_path / "run.yaml")) == OPTIONS
    assert options_from_file(TrainConfig, str(tmp_path / "run.toml")) == toml


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.json", '{"epoch": 3}', "'epoch' is no option of this command"),
        ("b.json", '{"epochs": "3"}', "epochs = '3' is not int"),
        ("c.json", '{"learning_rate": true}', "learning_rate = True is not float"),
        ("d.json", '{"gradient_clip": "x"}', "gradient_clip = 'x' is not float or null"),
        ("e.json", "[1, 2]", "expected option = value entries at the top level"),
        ("f.yaml", "epochs: [", "not valid YAML"),
        ("g.toml", "epochs = ", "not valid TOML"),
        ("h.ini", "epochs=3", "expected a .toml, .yaml, .yml or .json file"),
        ("missing.json", None, "no such file"),
    ],
)
def test_a_bad_options_file_is_refused_naming_the_entry(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as refused:
        options_from_file(TrainConfig, str(path))
    assert str(refused.value) == f"--config {path}: {message}" or str(refused.value).startswith(
        f"--config {path}: {message}"
    )


@pytest.mark.slow
def test_a_logged_run_re_runs_from_its_config_with_typed_options_winning(qm9_dir: Path, tmp_path: Path) -> None:
    """``--config runs:/ID/config.json`` (the ID's first 8 characters): the same options, a typed one changed,
    the first run's checkpoint neither read nor written."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tiny = dict(**TINY_MODEL, batch_size=16, limit=QM9_SUBSET, epochs=2, eval_interval=1, gpus=0)
    first = run(TrainConfig(**tiny, data_dir=str(qm9_dir), tracking_uri=uri, save_ckpt_path=str(tmp_path / "first.pt")))
    before = (tmp_path / "first.pt").read_bytes()
    done = run_se3pyg("train", "--config", f"runs:/{first.run_id[:8]}/config.json", "--tracking-uri", uri,
                      "--run-name", "again", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = mlflow.MlflowClient(uri)
    (again,) = client.search_runs(
        [client.get_experiment_by_name("se3pyg").experiment_id], "attributes.run_name = 'again'"
    )
    ours, theirs = again.data.params, client.get_run(first.run_id).data.params
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differ == {"run_name", "save_ckpt_path"} and ours["save_ckpt_path"] == "None"
    assert (tmp_path / "first.pt").read_bytes() == before
