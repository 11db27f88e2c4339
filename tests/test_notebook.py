"""The notebook page runs, cell by cell, in a real Jupyter kernel (issue 13, item 5).

``docs/notebooks.md`` is written as a notebook: each ``<!-- notebook -->`` block is a
cell and the ``<!-- output -->`` block after it is what the cell must show (``...``
matches any text). This test turns the page into a notebook, runs it with nbclient
in an ipykernel against the fake server on loopback, presses the interrupt button
on the cell marked ``interrupt`` once it has fetched something, and checks every
output, so the page cannot go stale.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "notebooks.md"
CELL = re.compile(
    r"<!-- notebook( interrupt)? -->\s*\n```python\n(.*?)```"
    r"(?:\s*<!-- output -->\s*\n```text\n(.*?)```)?",
    re.S,
)
WIDGET = "application/vnd.jupyter.widget-view+json"


def cells() -> list[tuple[str, bool, str | None]]:
    """(source, interrupt it, expected output) for each cell of the page."""
    return [(m[2], bool(m[1]), m[3]) for m in CELL.finditer(PAGE.read_text())]


def shown(outputs: list[Any]) -> str:
    """What a cell shows as text: streams, results, errors (without their traceback)."""
    parts = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            parts.append(output["data"].get("text/plain", ""))
        elif output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
    return "\n".join(parts)


def matches(expected: str, text: str) -> bool:
    pattern = ".*?".join(map(re.escape, expected.strip().split("...")))
    return re.search(pattern, text) is not None


def kernel_here(folder: Path) -> None:
    """A kernelspec for this very interpreter, so CI's fresh environment is the one tested."""
    spec = folder / "kernels" / "bca-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "bca test", "language": "python"})
    )


def fetched_so_far(store: Path) -> int:
    """Segments the store holds for link_pre (read while the kernel writes: WAL)."""
    if not store.exists():
        return 0
    import braincircuits_async as bca

    try:
        with bca.ResultStore(store) as held:
            counts = held.materializations("link_pre", project="fruitfly_fafb_flywire")
    except bca.StoreError:
        return 0  # not created yet
    return sum(counts.values())


def test_the_notebook_page_runs_in_a_real_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel_here(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    page = cells()
    assert len(page) >= 8
    assert sum(interrupt for _, interrupt, _ in page) == 1
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source, _, _ in page]
    )
    runner = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="bca-test",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    store = tmp_path / "session.sqlite"

    async def interrupt_once_something_is_fetched(before: int) -> None:
        deadline = time.monotonic() + 60
        # Polled: the kernel, another process, writes the store.
        while fetched_so_far(store) <= before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await runner.km.interrupt_kernel()

    async def run() -> None:
        async with runner.async_setup_kernel():
            for index, (_, interrupt, _) in enumerate(page):
                pressing = None
                if interrupt:
                    before = fetched_so_far(store)
                    pressing = asyncio.ensure_future(interrupt_once_something_is_fetched(before))
                await runner.async_execute_cell(notebook.cells[index], index)
                if pressing is not None:
                    await pressing

    asyncio.run(run())

    for (source, interrupt, expected), cell in zip(page, notebook.cells, strict=True):
        text = shown(cell.outputs)
        errors = [o for o in cell.outputs if o["output_type"] == "error"]
        if interrupt:
            assert [e["ename"] for e in errors] == ["CancelledError"], text
            # One line, not a page of anyio frames: the cell, and the public method.
            frames = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0]["traceback"]))
            assert "anyio/" not in frames
            assert "_scheduler.py" not in frames
            assert frames.count("File ") <= 2, frames
        else:
            assert not errors, f"{source}\n---\n{text}"
        assert "IProgress not found" not in text
        if expected is not None:
            assert matches(expected, text), f"{source}\n--- expected\n{expected}\n--- got\n{text}"
        if "progress=True" in source:
            assert any(WIDGET in o.get("data", {}) for o in cell.outputs), cell.outputs
