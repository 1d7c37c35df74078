"""QM9 regression tasks: NVIDIA's names, PyG's target columns and units."""

from __future__ import annotations

from typing import NamedTuple


class Task(NamedTuple):
    """A QM9 regression target.

    Attributes:
        name: NVIDIA's name of it.
        column: its column of ``torch_geometric.datasets.QM9``'s ``y``.
        unit: the unit of its values (PyG's), in which se3pyg reports MAEs and predictions.
    """

    name: str
    column: int
    unit: str


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("mu", 0, "D"),
        Task("alpha", 1, "a0^3"),
        Task("homo", 2, "eV"),
        Task("lumo", 3, "eV"),
        Task("gap", 4, "eV"),
        Task("r2", 5, "a0^2"),
        Task("zpve", 6, "eV"),
        Task("U0", 7, "eV"),
        Task("U", 8, "eV"),
        Task("H", 9, "eV"),
        Task("G", 10, "eV"),
        Task("Cv", 11, "cal/mol/K"),
        Task("U0_atom", 12, "eV"),
        Task("U_atom", 13, "eV"),
        Task("H_atom", 14, "eV"),
        Task("G_atom", 15, "eV"),
        Task("A", 16, "GHz"),
        Task("B", 17, "GHz"),
        Task("C", 18, "GHz"),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the valid names otherwise.

    Args:
        name: NVIDIA's name of a QM9 target (``homo``, ``U0``, ...).

    Raises:
        ValueError: an unknown name.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None
