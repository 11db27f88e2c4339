"""The blocking fetch_property for scripts, and tokens from CAVEclient's secret files."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import braincircuits_async as bca
from braincircuits_async import testing
from braincircuits_async._config import resolve_cave_token


def test_blocking_fetch_property_runs_the_async_client() -> None:
    fake = testing.FakeBrainCircuits()
    with testing.serve_in_thread(fake) as url:
        result = bca.fetch_property(
            "link_pre",
            [720575940634474894, 720575940630280234],
            project="fruitfly_fafb_flywire",
            token=testing.DEFAULT_TOKEN,
            cave_token=testing.DEFAULT_CAVE_TOKEN,
            base_url=url,
        )
    assert result[720575940634474894] == fake.expected("link_pre", 720575940634474894)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_fetch_inside_an_event_loop_says_to_await(backend: str) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"await client\.fetch_property"):
            bca.fetch_property("size", [1], project="p", token="t")

    anyio.run(main, backend=backend)


def write(folder: Path, name: str, token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"token": token}))


def test_cave_token_comes_from_caveclients_secret_file(tmp_path: Path) -> None:
    write(tmp_path, "cave-secret.json", "from-file")
    secret = resolve_cave_token(None, environ={}, secrets_dir=tmp_path)
    assert secret is not None
    assert secret.reveal() == "from-file"
    assert secret.source.endswith("cave-secret.json")


def test_flywires_server_specific_file_wins_over_others(tmp_path: Path) -> None:
    write(tmp_path, "cave.fanc-fly.com-cave-secret.json", "fanc")
    write(tmp_path, "global.daf-apis.com-cave-secret.json", "flywire")
    secret = resolve_cave_token(None, environ={}, secrets_dir=tmp_path)
    assert secret is not None
    assert secret.reveal() == "flywire"


def test_environment_wins_over_the_secret_file(tmp_path: Path) -> None:
    write(tmp_path, "cave-secret.json", "from-file")
    secret = resolve_cave_token(None, environ={"CAVE_TOKEN": "from-env"}, secrets_dir=tmp_path)
    assert secret is not None
    assert secret.reveal() == "from-env"


def test_a_broken_secret_file_is_skipped(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "cave-secret.json").write_text("{not json")
    write(tmp_path, "other.server-cave-secret.json", "fallback")
    secret = resolve_cave_token(None, environ={}, secrets_dir=tmp_path)
    assert secret is not None
    assert secret.reveal() == "fallback"


def test_no_file_and_no_variable_means_no_token(tmp_path: Path) -> None:
    assert resolve_cave_token(None, environ={}, secrets_dir=tmp_path / "absent") is None


def test_the_client_finds_the_secret_file_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / ".cloudvolume" / "secrets", "cave-secret.json", "home-token")
    monkeypatch.setenv("HOME", str(tmp_path))
    client = bca.AsyncClient(token="t", base_url="https://api.test")
    assert "cave-secret.json" in repr(client)
    assert "home-token" not in repr(client)
