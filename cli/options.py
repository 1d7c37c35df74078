"""Command options generated from the config dataclasses, so each option is declared once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from se3pyg.cli.console import err_console, one_line_errors
from se3pyg.options import choices_of, help_of

if TYPE_CHECKING:
    from se3pyg.engine.config import DeviceOptions

_Config = TypeVar("_Config", bound="DeviceOptions")


def _fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls``, its own first, then those of each base class (the order of ``--help``)."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    ordered: dict[str, dataclasses.Field] = {}
    for klass in cls.__mro__:
        for name in vars(klass).get("__annotations__", {}):
            if name in by_name:
                ordered.setdefault(name, by_name[name])
    return list(ordered.values())


#: ``--help``'s panels: each option under the concept it sets (one not named here: with the command's own).
PANELS = {
    "Data": (
        "task",
        "data_dir",
        "limit",
        "dataset",
        "target",
        "unit",
        "split_field",
        "split_fractions",
        "bad_records",
        "seed",
        "num_workers",
        "input",
        "output",
        "split",
        "ckpt",
        "target_mean",
        "target_std",
    ),
    "Model": (
        "num_layers",
        "num_degrees",
        "num_channels",
        "num_heads",
        "channels_div",
        "pooling",
        "norm",
        "use_layer_norm",
        "layout",
        "low_memory",
        "kernel",
    ),
    "Optimisation": (
        "epochs",
        "batch_size",
        "optimizer",
        "learning_rate",
        "min_learning_rate",
        "momentum",
        "weight_decay",
        "gradient_clip",
        "accumulate_grad_batches",
    ),
    "Precision and devices": (
        "amp",
        "amp_dtype",
        "gpus",
        "processes",
        "cuda_graphs",
        "precompute_bases",
        "check_interval",
        "compile",
        "mode",
        "steps",
        "warmup",
    ),
    "Checkpoints and validation": ("save_ckpt_path", "load_ckpt_path", "ckpt_interval", "eval_interval"),
    "Tracking": (
        "tracking",
        "tracking_uri",
        "experiment",
        "run_name",
        "register_model",
        "register_alias",
        "system_metrics",
    ),
}
_PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def _annotation(f: dataclasses.Field, hint: Any) -> Any:
    """The option's type: its field's, or the choices it takes (``--help`` lists them, a typo is refused)."""
    choices = choices_of(f)
    return typing.Literal[choices] if choices else hint


def _flags(f: dataclasses.Field, annotation: Any) -> tuple[str, ...]:
    """The field's own flags; else typer's, except that an option off by default is a plain switch."""
    if f.metadata.get("flags"):
        return f.metadata["flags"]
    if annotation is bool and f.default is False:
        return (f"--{f.name.replace('_', '-')}",)
    return ()


def config_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of the dataclass ``cls`` (its default, help text and flags).

    The command receives them as ``values``, a dict by field name, beside its own parameters.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in _fields(cls) if f.name not in exclude]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "values"]
        generated = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    f.default,
                    *_flags(f, hints[f.name]),
                    help=help_of(f),
                    rich_help_panel=_PANEL_OF.get(f.name, "Other"),
                ),
                annotation=_annotation(f, hints[f.name]),
            )
            for f in fields
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields}
            return command(values=values, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + generated)
        wrapper.__annotations__ = {**typing.get_type_hints(command), **{p.name: p.annotation for p in generated}}
        return wrapper

    return decorate


def typed_by_user(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` came from the command line (not from its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def defaults_for_untyped(ctx: typer.Context, values: dict[str, Any], defaults: dict[str, Any]) -> set[str]:
    """Set ``defaults`` (``--quick``'s, a ``--config`` file's) in ``values`` for the options not typed (a typed
    option wins); the names set."""
    taken = {k: v for k, v in defaults.items() if not typed_by_user(ctx, k)}
    values.update(taken)
    return set(taken)


def validated(cls: type[_Config], **values: Any) -> _Config:
    """The command's config, validated before the engine (and torch) loads: a mistyped option is refused at once,
    as one line."""
    with one_line_errors():
        config = cls(**values)
        config.validate()
    return config


def announce_eager(config: DeviceOptions) -> None:
    """Say in one line when a run on GPUs goes eager though CUDA graphs are the default there (an option needs the
    eager step). Loads torch, to count the GPUs."""
    with one_line_errors():
        note = config.graphs_note(config.resolve_gpus())
    if note:
        err_console.print(note, markup=False, highlight=False)  # stdout may be predict's CSV
