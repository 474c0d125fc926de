"""`adamix serve` settings: defaults < ADAMIX_* environment < flags."""
from __future__ import annotations

from pathlib import Path

from server.cli import build_parser
from server.serve_cli import settings_from_args


def test_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("ADAMIX_PORT", "9001")
    monkeypatch.setenv("ADAMIX_MAX_BATCH_ROWS", "32")
    monkeypatch.setenv("ADAMIX_PINNED_TASKS", '["sst2"]')
    args = build_parser().parse_args(["serve", "--port", "9002", "--registry", "/tmp/reg", "--device", "cpu"])
    s = settings_from_args(args)
    assert (s.port, s.max_batch_rows, s.pinned_tasks) == (9002, 32, ["sst2"])
    assert (s.registry, s.device, s.host) == (Path("/tmp/reg"), "cpu", "127.0.0.1")
    assert s.max_inputs_per_request == 32  # follows max_batch_rows unless set


def test_bad_backbone_directory_exits_with_a_message(tmp_path, capsys):
    args = build_parser().parse_args(["serve", "--backbone", str(tmp_path)])
    assert args.func(args) == 2
    assert "no config.json" in capsys.readouterr().err
