"""`adamix serve` settings: defaults < ADAMIX_* environment < flags."""
from __future__ import annotations

from pathlib import Path

from adamix.cli import build_parser
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


def test_non_loopback_host_without_keys_is_refused_with_a_message(capsys, monkeypatch):
    monkeypatch.delenv("ADAMIX_INSECURE_NO_AUTH", raising=False)
    monkeypatch.delenv("ADAMIX_API_KEYS_FILE", raising=False)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    assert args.func(args) == 2
    assert "adamix keys new" in capsys.readouterr().err


def test_auth_and_drain_flags_reach_the_settings(tmp_path):
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--api-keys", str(tmp_path / "k.json"),
                                      "--rate-limit-per-s", "5", "--drain-timeout-s", "3"])
    s = settings_from_args(args)
    assert (s.api_keys_file, s.rate_limit_per_s, s.drain_timeout_s) == (tmp_path / "k.json", 5.0, 3.0)


def test_unreadable_keys_file_exits_with_a_message(tmp_path, capsys):
    (tmp_path / "keys.json").write_text('{"keys": [{"name": "x", "sha256": "not-hex", "admin": true}]}')
    args = build_parser().parse_args(["serve", "--api-keys", str(tmp_path / "keys.json")])
    assert args.func(args) == 2
    assert "sha256" in capsys.readouterr().err


def test_every_setting_is_a_serve_flag_with_its_help():
    from server.settings import Settings

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {a.dest: a for a in serve._actions if a.dest != "help"}
    topology = {"engine", "replicas", "ray_address", "ray_replica_cpus"}  # how many processes, not app settings
    assert set(flags) - {"func"} - topology == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert f"ADAMIX_{name.upper()}" in flags[name].help and (field.description or "")[:20] in flags[name].help
    args = build_parser().parse_args(["serve", "--no-verify-registry", "--pin", "a", "--pin", "b",
                                      "--max-text-chars", "50"])
    s = settings_from_args(args)
    assert (s.verify_registry, s.pinned_tasks, s.max_text_chars) == (False, ["a", "b"], 50)


def test_the_command_finds_its_subcommands_through_entry_points():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == {"train", "eval", "serve", "keys", "adapters", "registry"}
