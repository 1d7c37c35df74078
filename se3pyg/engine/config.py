"""What a command runs: its options as dataclasses, NVIDIA's names and defaults (the published QM9 recipe).

Each field carries its help text (`se3pyg.options.option()`); the command
line is generated from these classes. ``validate`` refuses what cannot work
with a ``ValueError`` naming the option; `DeviceOptions.resolve_gpus()`
turns "all visible GPUs" into a count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from se3pyg.engine.tracking import resolve_tracking_uri, sqlite_file
from se3pyg.io import (
    SQLITE_COMPANIONS,
    best_path,
    cache_dir,
    check_file,
    check_writable,
    lock_path,
    refuse_overwrites,
)
from se3pyg.options import MODEL_SIZE_LIMITS, ModelOptions, option

if TYPE_CHECKING:
    import torch

    from se3pyg.data.custom import DatasetSpec

#: ``--amp-dtype`` (the names of [`se3pyg.engine.precision.DTYPES`][se3pyg.engine.precision.DTYPES], and auto).
AMP_DTYPES = ("auto", "fp16", "bf16")
#: ``--num-degrees`` at most: features of degrees 0 .. 6, whose bonds' kernels need spherical harmonics up to
#: degree 2 * 6 = 12, the highest e3nn computes.
MAX_DEGREES = 7
#: ``--optimizer``: AdamW, SGD with momentum, LAMB
#: ([`se3pyg.engine.optim.make_optimizer()`][se3pyg.engine.optim.make_optimizer]).
OPTIMIZERS = ("adam", "sgd", "lamb")
_Options = TypeVar("_Options", bound="DeviceOptions")


@dataclass
class DeviceOptions:
    """Where and in what precision a command computes, and where it is tracked."""

    batch_size: int = option(240, "Molecules per batch and process.")
    amp: bool = option(False, "Automatic mixed precision.", "--amp/--no-amp")
    amp_dtype: str = option(
        "auto", "AMP dtype: fp16 (with a GradScaler), bf16, or auto (fp16 on GPUs, bf16 on CPU).", choices=AMP_DTYPES
    )
    gpus: int | None = option(None, "GPUs on this node, one process each (0: the CPU; default: all visible).")
    tracking: bool = option(
        True, "Log the run to MLflow (--no-tracking: nothing logged, MLflow not loaded).", "--tracking/--no-tracking"
    )
    tracking_uri: str | None = option(None, "MLflow store (default $MLFLOW_TRACKING_URI or mlruns/).")
    experiment: str = option("se3pyg", "MLflow experiment.")
    cuda_graphs: bool | None = option(
        None,
        "Replay each step as a CUDA graph, batches padded to a few shapes (default: on GPUs, unless an option "
        "needs the eager step).",
        "--cuda-graphs/--no-cuda-graphs",
    )

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"--amp-dtype must be fp16 or bf16 (or auto), got {self.amp_dtype!r}")
        if self.amp_dtype != "auto" and not self.amp:
            raise ValueError(f"--amp-dtype {self.amp_dtype} needs --amp (without it everything runs in float32)")
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"--gpus must be >= 0, got {self.gpus}")
        if not self.experiment.strip():
            raise ValueError(f"--experiment must name an MLflow experiment, got {self.experiment!r}")

    def resolve_gpus(self: _Options, visible: int | None = None) -> _Options:
        """A copy, validated, with ``gpus`` counted (``None``: every one of the ``visible`` GPUs, by default those
        torch sees; ``ValueError`` when too many) and ``cuda_graphs`` decided (``None``: on GPUs, unless
        `eager_only()` names an option that needs the eager step).

        Args:
            visible: the GPUs this process sees (``None``: as torch counts them).

        Raises:
            ValueError: more GPUs asked than visible, or CUDA graphs asked where they cannot run.
        """
        self.validate()
        if visible is None:
            import torch

            visible = torch.cuda.device_count()
        gpus = visible if self.gpus is None else self.gpus
        if gpus > visible:
            raise ValueError(f"--gpus {gpus}: only {visible} visible")
        if self.cuda_graphs and not gpus:
            raise ValueError("--cuda-graphs needs a GPU, and this run is on the CPU (no GPU visible, or --gpus 0)")
        graphs = self.cuda_graphs if self.cuda_graphs is not None else bool(gpus) and self.eager_only() is None
        return dataclasses.replace(self, gpus=gpus, cuda_graphs=graphs)

    def eager_only(self) -> str | None:
        """The option that needs the eager step (no CUDA graphs), or ``None``."""
        return None

    def graphs_note(self, resolved: DeviceOptions) -> str | None:
        """The line that says why a run on GPUs (``resolved``, from this config) runs eagerly though the graphed
        step is the default there, or ``None``.

        Args:
            resolved: this config after `resolve_gpus`.
        """
        reason = self.eager_only()
        if self.cuda_graphs is None and resolved.use_cuda and reason is not None:
            return f"CUDA graphs off: {reason} needs the eager step"
        return None

    def tracking_store(self) -> list[tuple[str, str]]:
        """What a command never writes over in a local SQLite tracking store, as ``(option, path)`` pairs: the
        database, SQLite's companion files, and the experiment folders of its artifact root (runs' artifacts and
        logged models); none for a server. Kept whether or not this command tracks."""
        db = sqlite_file(resolve_tracking_uri(self.tracking_uri))
        if db is None:
            return []
        store = [("the MLflow tracking store", str(db))]
        store += [(f"the MLflow tracking store's {end} file", f"{db}{end}") for end in SQLITE_COMPANIONS]
        root = db.resolve().parent
        if root.is_dir():
            experiments = (f for f in sorted(root.iterdir()) if f.name.isdigit() and f.is_dir())
            store += [("the MLflow artifacts of experiment", str(f)) for f in experiments]
        return store

    @property
    def use_cuda(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The options that describe a ``--dataset``: meaningless without one.
DATASET_ONLY = ("target", "unit", "split_field", "split_fractions", "bad_records")


@dataclass
class RunOptions(DeviceOptions, ModelOptions):
    """Options of the commands that run a model on QM9: the model's, the devices', the data's."""

    seed: int = option(0, "Random seed (model initialization and batch order).")
    data_dir: str = option("data/qm9", "QM9 folder (built when missing).")
    limit: int | None = option(None, "Use only the first N QM9 molecules.")
    precompute_bases: bool = option(False, "Keep every bond's spherical harmonics in RAM.")
    processes: int = option(1, "Processes when not on GPUs (DDP over gloo), e.g. to test DDP on CPU.")
    dataset: str | None = option(None, "Your molecules instead of QM9: an SDF, or a folder of XYZ/SDF files + a CSV.")
    target: str | None = option(None, "With --dataset: the SDF data field or CSV column to learn.")
    unit: str = option("", "With --dataset: the target's unit, for reports.")
    split_field: str | None = option(None, "With --dataset: the field holding each molecule's split (train/val/test).")
    split_fractions: str = option("0.8,0.1,0.1", "With --dataset and no --split-field: train,val,test fractions.")
    bad_records: str = option(
        "skip", "With --dataset: skip bad molecules (counted) or refuse the dataset.", choices=("skip", "refuse")
    )

    def dataset_spec(self) -> DatasetSpec:
        """What ``--dataset`` and its options describe."""
        return dataset_spec(asdict(self))

    def model_options(self) -> dict[str, Any]:
        """The `ModelOptions` fields, as ``SE3TransformerPooled`` keywords."""
        return {f.name: getattr(self, f.name) for f in fields(ModelOptions)}

    def eager_only(self) -> str | None:
        return "--precompute-bases" if self.precompute_bases else None

    def data_read(self) -> list[tuple[str, str]]:
        """The molecules a run reads, as ``(option, path)`` pairs: ``--dataset`` and its cache, or the QM9 folder."""
        return _dataset_read(self.dataset) if self.dataset is not None else [("--data-dir", self.data_dir)]

    @property
    def world_size(self) -> int:
        """Processes of the run: one per GPU, else ``processes``."""
        return self.gpus if self.gpus else self.processes

    def validate(self) -> None:
        super().validate()
        positive = ("num_layers", "num_degrees", "num_channels", "processes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("num_layers", "num_channels", "num_heads", "channels_div"):
            if getattr(self, name) > MODEL_SIZE_LIMITS[name]:
                limit = MODEL_SIZE_LIMITS[name]
                raise ValueError(f"--{name.replace('_', '-')} must be at most {limit:,}, got {getattr(self, name):,}")
        if self.num_degrees > MAX_DEGREES:
            raise ValueError(
                f"--num-degrees must be at most {MAX_DEGREES} (its kernels need spherical harmonics of degree "
                f"{2 * (self.num_degrees - 1)}; e3nn computes them up to 12), got {self.num_degrees}"
            )
        if self.num_heads < 1 or self.channels_div < 1:
            raise ValueError("--num-heads and --channels-div must be >= 1")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"--pooling must be max or avg, got {self.pooling!r}")
        if self.dataset is not None:
            if not self.target:
                raise ValueError(f"--dataset {self.dataset}: name the value to learn with --target")
            self.dataset_spec().validate()
        else:
            for name in DATASET_ONLY:
                if getattr(self, name) != RunOptions.__dataclass_fields__[name].default:
                    raise ValueError(f"--{name.replace('_', '-')}: only with --dataset (QM9's value is --task)")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")
        if self.cuda_graphs and self.precompute_bases:
            raise ValueError("--cuda-graphs and --precompute-bases: padded batches cannot carry precomputed harmonics")
        if self.limit is not None and self.limit < 10:
            raise ValueError(f"--limit must be >= 10 (train, validation and test need molecules), got {self.limit}")
        if (self.num_channels // self.channels_div) % self.num_heads:
            raise ValueError(
                f"--num-heads {self.num_heads} must divide num_channels / channels_div = "
                f"{self.num_channels // self.channels_div}"
            )


@dataclass
class TrainConfig(RunOptions):
    """``se3pyg train``: NVIDIA's training options."""

    task: str | None = option(None, "QM9 target by NVIDIA's name (homo, lumo, gap, U0, ...); default homo.")
    epochs: int = option(100, "Total number of epochs (also when resuming).")
    num_workers: int = option(0, "DataLoader worker processes.")
    gradient_clip: float | None = option(None, "Clip the gradient norm to this value.")
    accumulate_grad_batches: int = option(1, "Batches per optimizer step.")
    ckpt_interval: int = option(-1, "Save a checkpoint every N epochs (-1: only the last).")
    eval_interval: int = option(20, "Validate every N epochs (and after the last).")
    save_ckpt_path: str | None = option(None, "Last checkpoint; the best one is saved beside it.")
    load_ckpt_path: str | None = option(None, "Resume from this se3pyg checkpoint (its task, model and statistics).")
    optimizer: str = option("adam", "adam (AdamW), sgd or lamb.", choices=OPTIMIZERS)
    learning_rate: float = option(0.002, "Initial learning rate.", "--learning-rate", "--lr")
    min_learning_rate: float | None = option(None, "Cosine schedule floor (default lr / 10).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.1, "Weight decay (decoupled for adam and lamb).")
    run_name: str | None = option(None, "MLflow run name.")
    check_interval: int | None = option(
        None, "Read non-finite losses and stop signals on the host every N steps (default: 1 on CPU, 50 on GPUs)."
    )
    register_model: str | None = option(None, "Register the trained model in MLflow's model registry as NAME.")
    register_alias: str | None = option(
        "challenger", "With --register-model: the alias of the new version (models:/NAME@ALIAS)."
    )
    system_metrics: bool = option(
        True, "Log CPU, memory, disk (and GPU) use as MLflow system metrics.", "--system-metrics/--no-system-metrics"
    )

    def check_every(self, device: torch.device) -> int:
        """Steps between host reads of the loss health (each drains a GPU's queue; free on CPU).

        Args:
            device: the device the run trains on.
        """
        if self.check_interval is not None:
            return self.check_interval
        return 1 if device.type == "cpu" else 50

    def validate(self) -> None:
        from se3pyg.data.tasks import get_task

        if self.dataset is None:
            get_task(self.task or "homo")  # the task first: a typo there is the commonest mistake
        elif self.task is not None:
            raise ValueError(f"--task {self.task}: --task names a QM9 target; with --dataset use --target")
        super().validate()
        if self.gradient_clip is not None and not self.gradient_clip > 0:
            raise ValueError(f"--gradient-clip must be > 0, got {self.gradient_clip}")
        if self.check_interval is not None and self.check_interval < 1:
            raise ValueError(f"--check-interval must be >= 1, got {self.check_interval}")
        for name in ("epochs", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"--learning-rate must be a number > 0, got {self.learning_rate}")
        if self.min_learning_rate is not None and not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"--min-learning-rate must be between 0 and --learning-rate {self.learning_rate}, "
                f"got {self.min_learning_rate}"
            )
        if not 0 <= self.weight_decay < math.inf or not 0 <= self.momentum < 1:
            raise ValueError(
                f"--weight-decay must be a number >= 0 and --momentum in [0, 1), got {self.weight_decay} and "
                f"{self.momentum}"
            )
        check_model_names(self.register_model, self.register_alias)
        if self.register_model and not self.tracking:
            raise ValueError(f"--register-model {self.register_model}: registers in MLflow, and --no-tracking is set")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.load_ckpt_path is not None:
            check_file(self.load_ckpt_path, "--load-ckpt-path")
        if self.save_ckpt_path and Path(self.save_ckpt_path).is_dir():
            raise ValueError(f"--save-ckpt-path {self.save_ckpt_path}: is a directory")
        # --load-ckpt-path is not among the reads: it is read whole before any write, and resuming a run writes
        # its checkpoints over the ones it resumed from.
        refuse_overwrites(self.data_read() + self.tracking_store(), self.checkpoints_written())

    def checkpoints_written(self) -> list[tuple[str, str]]:
        """``--save-ckpt-path``, the best checkpoint and the lock beside it, as ``(option, path)`` pairs."""
        if not self.save_ckpt_path:
            return []
        save = self.save_ckpt_path
        return [
            ("--save-ckpt-path", save),
            (f"the best checkpoint of --save-ckpt-path {save}", str(best_path(save))),
            (f"the lock of --save-ckpt-path {save}", str(lock_path(save))),
        ]

    def check_before_training(self) -> None:
        """Refuse what would only fail or do nothing after the data build: a training split smaller than one
        batch a process, a checkpoint path that cannot be written."""
        from se3pyg.data import NUM_MOLECULES, split_sizes

        train = split_sizes(self.limit or NUM_MOLECULES)[0] // self.world_size
        if self.dataset is None and train < self.batch_size:
            raise ValueError(
                f"--batch-size {self.batch_size}: the training split has {train} molecules a process, fewer than "
                "one batch; lower --batch-size or raise --limit"
            )
        if self.save_ckpt_path:
            check_writable(self.save_ckpt_path, "--save-ckpt-path")

    @property
    def lr_floor(self) -> float:
        """The cosine schedule's floor: ``--min-learning-rate``, else a tenth of the learning rate."""
        return self.min_learning_rate if self.min_learning_rate is not None else self.learning_rate / 10

    def resumed_from(self, checkpoint: dict[str, Any], typed: Collection[str] | None = None) -> TrainConfig:
        """This config as the resume of ``checkpoint``: the run it continues, as its checkpoint recorded it.

        Every option of the checkpoint's run (batch size, epochs, intervals, precision, tracking, ...) is taken
        from it unless typed; the machine's own (`RESUME_LOCAL`: devices, workers) are not. The task, the
        model options and `RESUME_KEEPS` (the molecules, their split, the optimizer) are the checkpoint's:
        one typed with another value is refused. Without ``--save-ckpt-path`` the resume saves where the checkpoint
        was (beside it when it is a best checkpoint).

        Args:
            checkpoint: a checked se3pyg checkpoint ([`check_trained()`][se3pyg.engine.checkpoint.check_trained]).
            typed: the options the user typed (field names); ``None``: those that differ from their defaults.

        Raises:
            ValueError: a typed option that would change the molecules, their split, the optimizer or the task.
        """
        recorded = checkpoint["config"]
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        given = set(typed) if typed is not None else {k for k in defaults if getattr(self, k) != defaults[k]}
        if self.dataset is None and "task" in given and self.task != checkpoint["task"]:
            raise ValueError(
                f"--task {self.task}: {self.load_ckpt_path} was trained for {checkpoint['task']!r}; "
                "leave --task out to resume it"
            )
        changes = {k: v for k, v in checkpoint["model_config"].items() if k in self.model_options()}
        for name in defaults:
            if name in changes or name in RESUME_LOCAL or name == "task":
                continue
            mine, theirs = getattr(self, name), recorded.get(name, defaults[name])
            if name not in given:
                changes[name] = theirs
            elif name in RESUME_KEEPS and not _same_option(name, mine, theirs):
                raise ValueError(
                    f"--{name.replace('_', '-')} {mine}: {self.load_ckpt_path} was trained with {theirs!r}; a resume "
                    "keeps its molecules, split and optimizer (leave the option out)"
                )
        if "save_ckpt_path" not in given:
            loaded = Path(str(self.load_ckpt_path))
            changes["save_ckpt_path"] = str(_last_of(loaded))
        resumed = dataclasses.replace(self, **changes)
        return resumed if resumed.dataset else dataclasses.replace(resumed, task=checkpoint["task"])

    def changed_on_resume(self, checkpoint: dict[str, Any]) -> list[str]:
        """The options of this resumed config that differ from the run the checkpoint recorded, as
        ``--NAME OLD -> NEW`` (devices and the checkpoint paths left out): what a typed option changes.

        Args:
            checkpoint: the checkpoint resumed from.
        """
        recorded = checkpoint["config"]
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        quiet = {*RESUME_LOCAL, "save_ckpt_path"}
        return [
            f"--{name.replace('_', '-')} {recorded.get(name, defaults[name])} -> {getattr(self, name)}"
            for name in defaults
            if name not in quiet and getattr(self, name) != recorded.get(name, defaults[name])
        ]


#: What a resume keeps of its checkpoint's options: the molecules and their split (another split would test on
#: molecules trained on, with the old split's target statistics), and the optimizer (its state is restored).
RESUME_KEEPS = (
    "limit",
    "dataset",
    "target",
    "unit",
    "split_field",
    "split_fractions",
    "seed",
    "bad_records",
    "optimizer",
)
#: What a resume never takes from its checkpoint: the checkpoint itself, and what belongs to the machine it runs on.
RESUME_LOCAL = (
    "load_ckpt_path",
    "gpus",
    "processes",
    "cuda_graphs",
    "num_workers",
    "check_interval",
    "precompute_bases",
)


def _last_of(path: Path) -> Path:
    """The last checkpoint a checkpoint file belongs to: itself, or for ``X.best.pt`` the ``X.pt`` beside it."""
    return path.with_name(path.stem.removesuffix(".best") + path.suffix) if path.stem.endswith(".best") else path


#: What MLflow takes as an alias: letters, digits, ``_`` and ``-``; not ``latest``, nor ``vN`` (a version's name).
ALIAS_PATTERN = r"(?!latest$)(?!v\d+$)[A-Za-z0-9_-]{1,255}"


def check_model_names(
    name: str | None, alias: str | None, name_option: str = "--register-model", alias_option: str = "--register-alias"
) -> None:
    """Refuse a registered model's name or alias that MLflow would refuse only after the work.

    Args:
        name: a registered model's name: not blank, not ``..``, without ``/`` or ``:``.
        alias: an alias matching `ALIAS_PATTERN`.
        name_option: how messages name ``name``.
        alias_option: how messages name ``alias``.

    Raises:
        ValueError: naming the option.
    """
    import re

    if name is not None and (not name.strip() or "/" in name or ":" in name or name.strip(".") == ""):
        raise ValueError(f"{name_option} {name!r}: a registered model's name cannot be blank or hold / or :")
    if alias is not None and not re.fullmatch(ALIAS_PATTERN, alias):
        raise ValueError(f"{alias_option} {alias!r}: an alias is letters, digits, _ and -, and not latest or vN")


def _same_option(name: str, mine: Any, theirs: Any) -> bool:
    """Whether two values of an option are the same (``--dataset``: the same file or folder, links resolved)."""
    if name == "dataset" and mine is not None and theirs is not None:
        return Path(mine).resolve() == Path(theirs).resolve()
    return mine == theirs


def _dataset_read(dataset: str) -> list[tuple[str, str]]:
    """``--dataset`` and its cache, as ``(option, path)`` pairs of what a command reads."""
    return [("--dataset", dataset), ("the cache of --dataset", str(cache_dir(dataset)))]


def dataset_spec(options: dict[str, Any]) -> DatasetSpec:
    """The dataset that training options (``--dataset``, ``--target``, ... ; the split seeded with ``--seed``)
    describe, e.g. a checkpoint's recorded ones.

    Args:
        options: a config's options by field name (``dataset``, ``target``, ``unit``, ...).
    """
    from se3pyg.data.custom import DatasetSpec

    try:
        fractions = tuple(float(f) for f in str(options.get("split_fractions", "0.8,0.1,0.1")).split(","))
    except ValueError:
        raise ValueError(f"--split-fractions must be three numbers, got {options['split_fractions']!r}") from None
    return DatasetSpec(
        str(options["dataset"]),
        str(options["target"]),
        options.get("unit", ""),
        options.get("split_field"),
        fractions,
        options.get("seed", 0),
        options.get("bad_records", "skip"),
    )  # type: ignore[arg-type]


@dataclass
class BenchmarkConfig(RunOptions):
    """``se3pyg benchmark``: NVIDIA's throughput method on the training step, on inference, or on the data."""

    mode: str = option(
        "train",
        "What to time: a training step, a prediction, or the loader alone (data).",
        choices=("train", "predict", "data"),
    )
    steps: int = option(20, "Timed steps after the warm-up.")
    warmup: int = option(2, "Untimed warm-up steps.")
    epochs: int = option(0, "Instead of --steps: time this many epochs after a warm-up epoch.")
    compile: bool = option(False, "torch.compile the model (dynamic shapes).", "--compile")
    experiment: str = option("se3pyg-benchmark", "MLflow experiment.")

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("train", "predict", "data"):
            raise ValueError(f"mode must be train, predict or data, got {self.mode!r}")
        if self.steps < 1 or self.epochs < 0 or self.warmup < 0:
            raise ValueError("--steps must be >= 1, --epochs and --warmup >= 0")
        if self.compile and self.cuda_graphs:
            raise ValueError("--compile and --cuda-graphs: choose one (the graphs replay the eager model)")

    def eager_only(self) -> str | None:
        return "--compile" if self.compile else super().eager_only()

    def training(self) -> TrainConfig:
        """The training run whose step this benchmark times (NVIDIA's optimizer and schedule)."""
        shared = {f.name: getattr(self, f.name) for f in fields(RunOptions)}
        return TrainConfig(**shared)


@dataclass
class PredictConfig(DeviceOptions):
    """``se3pyg predict``: a checkpoint on a QM9 split, or on the user's molecules."""

    ckpt: str = option(
        ..., "se3pyg or NVIDIA checkpoint, or an MLflow model: runs:/RUN_ID/model, models:/NAME/N.", "--ckpt"
    )
    input: list[str] | None = option(None, "XYZ/SDF file or folder (repeatable).")
    output: str | None = option(None, "CSV file for --input predictions (default: standard output).")
    split: str = option(
        "test", "Without --input: the split to evaluate (all: with --dataset only).", choices=("test", "val", "all")
    )
    experiment: str = option("se3pyg-predict", "MLflow experiment (not the trainings', whose charts stay theirs).")
    dataset: str | None = option(
        None, "Without --input: evaluate on these molecules (SDF, or folder + CSV) with the model's target."
    )
    data_dir: str | None = option(None, "QM9 folder (default: the checkpoint's).")
    limit: int | None = option(None, "First N QM9 molecules (default: the checkpoint's).")
    task: str | None = option(None, "Task of an NVIDIA checkpoint (default homo).")
    target_mean: float | None = option(None, "NVIDIA checkpoints: train mean of the task.")
    target_std: float | None = option(None, "NVIDIA checkpoints: train std of the task.")
    num_heads: int = option(8, "NVIDIA checkpoints: attention heads.")
    channels_div: int = option(2, "NVIDIA checkpoints: channels_div.")
    run_name: str | None = option(None, "MLflow run name.")

    def validate(self) -> None:
        super().validate()
        for name in ("target_mean", "target_std"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and (name == "target_mean" or value > 0)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number (std: > 0), got {value}")
        if self.limit is not None and self.limit < 10:
            raise ValueError(f"--limit must be >= 10 (the splits need molecules), got {self.limit}")
        if self.split not in ("test", "val", "all") or (self.split == "all" and self.dataset is None):
            raise ValueError(f"--split must be test or val (or all, with --dataset), got {self.split!r}")
        local = not self.ckpt.startswith(("runs:/", "models:/"))  # else an MLflow model or run artifact
        if local:
            check_file(self.ckpt, "--ckpt")
        reads = [("--ckpt", self.ckpt)] if local else []
        reads += [("--input", path) for path in self.input or []]
        reads += _dataset_read(self.dataset) if self.dataset is not None else []
        reads += [("--data-dir", self.data_dir)] if self.data_dir is not None else []
        reads += self.tracking_store()
        refuse_overwrites(reads, [("--output", self.output)] if self.output is not None else [])
