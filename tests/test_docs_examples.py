"""Every Python example in the README and the docs runs, against the fake server.

The examples are written for the real service (tokens and address from the
environment); here the environment points them at a loopback fake. A block
preceded by ``<!-- skip -->`` is illustrative only (shell commands, fragments); one
preceded by ``<!-- notebook -->`` is a notebook cell, run in a real kernel by
``test_notebook.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from braincircuits_async import testing

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- (?:skip|notebook[^>]*) -->\s*\n)?```python\n(.*?)```", re.S)
GUIDE = ROOT / "docs" / "testing.md"  # its examples are a pytest module, run as one


def examples(path: Path) -> list[tuple[str, str]]:
    text = path.read_text()
    return [
        (f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(2))
        for m in BLOCK.finditer(text)
        if not m.group(1)
    ]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL = [example for page in PAGES for example in examples(page)]
# Examples that define tests are run by pytest, as one module per page.
TEST_MODULES = [example for example in ALL if "def test_" in example[1]]
EXAMPLES = [example for example in ALL if example not in TEST_MODULES]


@pytest.fixture
def service(fake_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes (a store, an output) land here
    monkeypatch.setenv("BRAINCIRCUITS_URL", fake_url)
    monkeypatch.setenv("BRAINCIRCUITS_TOKEN", testing.DEFAULT_TOKEN)
    monkeypatch.setenv("BRAINCIRCUITS_CAVE_TOKEN", testing.DEFAULT_CAVE_TOKEN)


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 8
    assert any(where.startswith("README.md") for where, _ in EXAMPLES)


@pytest.mark.usefixtures("service")
@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_runs(where: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__main__"})
    if "print(" in code:
        printed = capsys.readouterr().out
        assert printed
        # A comment ending in `-> value` says what that print shows: it must.
        for shown in re.findall(r"^\s*print\(.*#.*-> (.+)$", code, re.M):
            assert shown.strip() in printed.splitlines(), (shown, printed)


def test_the_testing_guide_examples_pass_under_pytest(tmp_path: Path) -> None:
    module = tmp_path / "test_guide.py"
    blocks = [code for where, code in TEST_MODULES if where.startswith("docs/testing.md")]
    assert len(blocks) >= 3
    module.write_text("\n\n".join(blocks))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
