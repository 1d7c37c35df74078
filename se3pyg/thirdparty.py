"""Third-party modules imported without the deprecation warnings their own code raises on recent torch.

PyG and e3nn decorate functions with ``torch.jit.script``, which torch now
deprecates with a warning at import or first use. The filter is narrow (that
message only) and scoped to these imports: other warnings still show.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def jit_deprecation_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=Warning)
        yield


with jit_deprecation_silenced():
    import torch_geometric.nn  # noqa: F401  (scripts its pooling selectors on import)
