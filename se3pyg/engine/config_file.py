"""Options read from a file: ``se3pyg train --config FILE`` (TOML, YAML or JSON), or a logged run's own
``config.json`` (``runs:/RUN_ID/config.json``), so that a run re-runs with one command."""

from __future__ import annotations

import json
import tempfile
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from se3pyg.engine.tracking import TrackingError, full_run_id, resolve_tracking_uri
from se3pyg.io import first_line

#: What a logged run's config names that a new run must not take from it: the checkpoints it read and wrote (a
#: re-run is a new run; it neither continues that one nor writes over its checkpoints).
RUN_OWN = ("load_ckpt_path", "save_ckpt_path")

#: The largest options file read, in bytes.
MAX_BYTES = 1 << 20


def options_from_file(cls: type, source: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The options ``source`` sets for the config dataclass ``cls``, by field name.

    Args:
        cls: the command's config (e.g. [`TrainConfig`][se3pyg.engine.config.TrainConfig]), whose fields are the
            options.
        source: a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file of ``option = value`` entries (names with ``_``
            or ``-``), or ``runs:/RUN_ID/config.json``: a logged run's options, without `RUN_OWN`.
        tracking_uri: the store of a ``runs:/`` source.

    Returns:
        ``{field: value}`` for the options the file sets.

    Raises:
        ValueError: naming ``--config`` and the entry: an unreadable file, an entry that is no option, a value of
            the wrong type.
    """
    text, suffix = _text(source, tracking_uri)
    entries = _parsed(text, suffix, source)
    if source.startswith("runs:/"):
        entries = {k: v for k, v in entries.items() if k not in RUN_OWN}
    return _typed(cls, entries, source)


def _text(source: str, tracking_uri: str | None) -> tuple[str, str]:
    """The file's text and suffix; a ``runs:/`` artifact is fetched from the store."""
    if not source.startswith("runs:/"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"--config {source}: no such file")
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"--config {source}: more than {MAX_BYTES:,} bytes; not an options file")
        return _decoded(path.read_bytes(), source), path.suffix.lower()
    import mlflow

    run_id, _, artifact = source.removeprefix("runs:/").partition("/")
    uri = resolve_tracking_uri(tracking_uri)
    try:
        run_id = full_run_id(run_id, uri)
        with tempfile.TemporaryDirectory(prefix="se3pyg-config-") as scratch:
            mlflow.set_tracking_uri(uri)
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=scratch))
            return _decoded(local.read_bytes()[: MAX_BYTES + 1], source), local.suffix.lower()
    except TrackingError as exc:
        raise ValueError(f"--config {source}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"--config {source}: cannot be fetched from {uri} ({first_line(exc)[:200]})") from None


def _decoded(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"--config {source}: not UTF-8 text") from None


def _parsed(text: str, suffix: str, source: str) -> dict[str, Any]:
    """The file's top-level table, by its suffix."""
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ValueError(f"--config {source}: expected a .toml, .yaml, .yml or .json file")
    try:
        if suffix == ".json":
            entries = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            entries = tomllib.loads(text)
        else:
            import yaml

            entries = yaml.safe_load(text)
    except ImportError as exc:  # tomllib before Python 3.11; PyYAML where MLflow is not installed
        raise ValueError(f"--config {source}: reading {suffix[1:].upper()} needs the module {exc.name}") from None
    except Exception as exc:  # each parser's own errors
        raise ValueError(f"--config {source}: not valid {suffix[1:].upper()} ({first_line(exc)[:200]})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"--config {source}: expected option = value entries at the top level")
    return {str(k).replace("-", "_"): v for k, v in entries.items()}


def _typed(cls: type, entries: dict[str, Any], source: str) -> dict[str, Any]:
    """``entries`` checked against the fields of ``cls``: each an option, each value of its type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for name, value in entries.items():
        if name not in names:
            raise ValueError(f"--config {source}: {name!r} is no option of this command")
        allowed = typing.get_args(hints[name]) or (hints[name],)
        if not any(_is(value, kind) for kind in allowed):
            kinds = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
            raise ValueError(f"--config {source}: {name} = {value!r:.60} is not {kinds}")
    return entries


def _is(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of the option type ``kind`` (an int is a float; a bool is no number)."""
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)
