"""Progress bars for long work: drawn only on a terminal, so logs and pipes never fill with them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar when `enabled` and stderr is a terminal; otherwise a silent pass-through of the same type."""
    return tqdm(iterable, disable=None if enabled else True, **options)


ProgressBar = tqdm
"""The type `progress_bar` returns, for annotations."""
