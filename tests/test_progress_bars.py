"""progress=True: a widget in a notebook with ipywidgets, else a text bar; never a warning."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import tqdm
import tqdm.notebook

from braincircuits_async import _progress


@pytest.mark.parametrize(
    ("notebook", "widgets", "expected"),
    [
        (True, True, tqdm.notebook.tqdm),
        (True, False, tqdm.std.tqdm),  # tqdm.auto would warn "IProgress not found" here
        (False, True, tqdm.std.tqdm),
        (False, False, tqdm.std.tqdm),
    ],
)
def test_the_bar_fits_where_it_is_drawn(
    monkeypatch: pytest.MonkeyPatch, notebook: bool, widgets: bool, expected: Any
) -> None:
    monkeypatch.setattr(_progress, "in_notebook", lambda: notebook)
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return (real(name, *args) if widgets else None) if name == "ipywidgets" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert _progress._bar_class() is expected  # and, filterwarnings = error: no warning


def test_outside_a_kernel_it_is_not_a_notebook() -> None:
    assert _progress.in_notebook() is False
