"""Options as dataclass fields that carry their own help text.

A command's options are declared once, as the fields of a config dataclass
(:class:`se3pyg.model.ModelOptions`, :mod:`se3pyg.engine.config`); the command
line is generated from those fields, so a default or a help text lives in one
place.
"""

from __future__ import annotations

from dataclasses import Field, field
from typing import Any


def option(default: Any, help: str, *flags: str) -> Any:
    """A dataclass field with ``default``, a one-line ``help`` and, optionally, its command-line ``flags``."""
    return field(default=default, metadata={"help": help, "flags": flags})


def help_of(f: Field) -> str:
    """The help text of a field declared with :func:`option` (empty for others)."""
    return f.metadata.get("help", "")
