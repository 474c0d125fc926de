"""The clients of the adapter endpoints against a real server: `adamix adapters ...` and the trainer's --push."""
from __future__ import annotations

import json

import pytest

from adamix.cli import main
from tests.integration.conftest import ADMIN_KEY, TENANT_KEY
from trainer.export import ExportError, push

pytestmark = pytest.mark.slow


def test_adapters_cli_and_trainer_push_drive_a_real_server(tmp_path, start_server, versions, capsys):
    server = start_server(tmp_path / "reg")
    first = push(server.url, ADMIN_KEY, "team-c", versions[0][1])  # what `adamix train --push` sends
    assert first["task"] == "team-c" and first["created"]
    with pytest.raises(ExportError, match="403"):
        push(server.url, TENANT_KEY, "team-c", versions[1][1])
    file = tmp_path / "v2.safetensors"
    file.write_bytes(versions[1][1])
    cli = ["adapters", "--url", server.url, "--api-key", ADMIN_KEY]
    assert main([*cli, "upload", "team-c", str(file)]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["created"] and second["version"] != first["version"]
    assert main([*cli, "activate", "team-c", first["version"]]) == 0
    capsys.readouterr()
    assert main([*cli, "list", "team-c"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] == first["version"]
    assert main([*cli, "delete", "team-c", "--version", second["version"]]) == 0
    assert main([*cli, "list"]) == 0
    listing = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the delete's one-line JSON
    assert [(t["task"], len(t["versions"])) for t in listing["tasks"]] == [("team-c", 1)]
    assert main(["adapters", "--url", server.url, "list"]) == 1  # no key
    assert "401 unauthorized" in capsys.readouterr().err
    assert main([*cli, "upload", "team-c", str(tmp_path / "missing.safetensors")]) == 2
