"""The blocking fetch_property for scripts, and tokens from CAVEclient's secret files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import braincircuits_async as bca
from braincircuits_async import testing
from braincircuits_async._config import cave_token_from_files

from .conftest import ScriptedServer, ServeOnLoopback


def test_blocking_fetch_property_runs_the_async_client(
    serve_on_loopback: ServeOnLoopback,
) -> None:
    fake = testing.FakeBrainCircuits()
    result = bca.fetch_property(
        "link_pre",
        [720575940634474894, 720575940630280234],
        project="fruitfly_fafb_flywire",
        token=testing.DEFAULT_TOKEN,
        cave_token=testing.DEFAULT_CAVE_TOKEN,
        base_url=serve_on_loopback(fake),
    )
    assert result[720575940634474894] == fake.expected("link_pre", 720575940634474894)


def write(folder: Path, name: str, token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"token": token}))


def test_cave_token_comes_from_caveclients_default_secret_file(tmp_path: Path) -> None:
    write(tmp_path, "cave-secret.json", "from-file")
    secret = cave_token_from_files("fruitfly_fafb_flywire", tmp_path)
    assert secret is not None
    assert secret.reveal() == "from-file"
    assert secret.source.endswith("cave-secret.json")


def test_the_projects_own_server_file_wins_and_another_servers_is_never_used(
    tmp_path: Path,
) -> None:
    write(tmp_path, "cave-secret.json", "default")
    write(tmp_path, "global.daf-apis.com-cave-secret.json", "flywire")
    write(tmp_path, "cave.fanc-fly.com-cave-secret.json", "fanc")
    write(tmp_path, "minnie.microns-daf.com-cave-secret.json", "microns")
    flywire = cave_token_from_files("fruitfly_fafb_flywire", tmp_path)
    fanc = cave_token_from_files("fruitfly_fanc_cave", tmp_path)
    assert flywire is not None
    assert flywire.reveal() == "flywire"
    assert fanc is not None
    assert fanc.reveal() == "fanc"
    # A project not managed by CAVE gets no token from the files at all.
    assert cave_token_from_files("hemibrain", tmp_path) is None


def test_a_broken_secret_file_is_skipped(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "global.daf-apis.com-cave-secret.json").write_text("{not json")
    write(tmp_path, "cave-secret.json", "fallback")
    secret = cave_token_from_files("fruitfly_fafb_flywire", tmp_path)
    assert secret is not None
    assert secret.reveal() == "fallback"


def test_no_file_means_no_token(tmp_path: Path) -> None:
    assert cave_token_from_files("fruitfly_fafb_flywire", tmp_path / "absent") is None


@pytest.mark.anyio
async def test_the_client_sends_a_file_token_only_to_cave_projects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / ".cloudvolume" / "secrets", "cave-secret.json", "home-token")
    monkeypatch.setenv("HOME", str(tmp_path))
    server = ScriptedServer()
    async with bca.AsyncClient(token="t", base_url="https://api.test", transport=server) as client:
        await client.fetch_property("size", [1], project="fruitfly_fafb_flywire")
        await client.fetch_property("size", [1], project="hemibrain")
        assert "secret files" in repr(client)
        assert "home-token" not in repr(client)
    flywire, hemibrain = server.requests
    assert flywire.headers["authorization-cave"] == "Bearer home-token"
    assert "authorization-cave" not in hemibrain.headers


@pytest.mark.anyio
async def test_an_explicit_cave_token_wins_over_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / ".cloudvolume" / "secrets", "cave-secret.json", "home-token")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CAVE_TOKEN", "from-env")
    server = ScriptedServer()
    async with bca.AsyncClient(token="t", base_url="https://api.test", transport=server) as client:
        await client.fetch_property("size", [1], project="fruitfly_fafb_flywire")
    assert server.requests[0].headers["authorization-cave"] == "Bearer from-env"
