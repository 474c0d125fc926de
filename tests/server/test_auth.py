"""API keys: the keys file, constant-time lookup, scopes, the rate limit, and `adamix keys new`."""
from __future__ import annotations

import json
import stat

import pytest

from server.auth import Authenticator, KeyFileError, RateLimiter, hash_key, load_keys, parse_keys
from adamix.cli import main
from server.errors import ForbiddenError, RateLimitedError, UnauthorizedError
from server.settings import Settings


def keys(**entries) -> dict:
    return {"keys": [{"name": n, "sha256": hash_key(f"key-{n}"), **e} for n, e in entries.items()]}


def test_scopes_admin_everything_tenant_its_patterns():
    auth = Authenticator(parse_keys(keys(ops={"admin": True}, team={"tasks": ["sst2", "team-a-*"]})))
    ops, team = auth.authenticate("Bearer key-ops"), auth.authenticate("bearer key-team")
    assert ops.name == "ops" and ops.may_use("anything")
    ops.require_admin()
    assert [team.may_use(t) for t in ("sst2", "team-a-x", "team-a-", "team-b-x", "sst2x")] == [
        True, True, True, False, False]
    with pytest.raises(ForbiddenError):
        team.require_admin()
    with pytest.raises(ForbiddenError, match="team-b"):
        team.require_task("team-b")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic a2V5LW9wcw==", "Bearer key-nope",
                                    "key-ops"])
def test_missing_or_unknown_key_is_401(header):
    auth = Authenticator(parse_keys(keys(ops={"admin": True})))
    with pytest.raises(UnauthorizedError) as info:
        auth.authenticate(header)
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_no_keys_configured_means_open_access():
    assert Authenticator(None).authenticate(None).admin


@pytest.mark.parametrize("data, match", [
    ({"keys": [{"name": "a", "sha256": "00", "admin": True}]}, "sha256"),
    ({"keys": [{"name": "a", "sha256": "A" * 64, "admin": True}]}, "sha256"),
    ({"keys": [{"name": "a", "sha256": "0" * 64}]}, "admin: true or at least one task"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "tasks": ["../x"]}]}, "tasks"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "admin": "yes"}]}, "admin"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "admin": True}, {"name": "a", "sha256": "1" * 64, "admin": True}]},
     "unique"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "admin": True, "key": "plaintext"}]}, "expected an object"),
    ([], "expected"),
])
def test_bad_keys_files_are_refused_naming_the_problem(data, match):
    with pytest.raises(KeyFileError, match=match):
        parse_keys(data)


def test_missing_keys_file_says_how_to_make_one(tmp_path):
    with pytest.raises(KeyFileError, match="adamix keys new"):
        load_keys(tmp_path / "nope.json")


def test_rate_limiter_allows_the_burst_then_429_with_retry_after():
    limiter = RateLimiter(rate=0.5, burst=3)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimitedError) as info:
        limiter.take("a")
    assert info.value.headers["Retry-After"] == "2"
    limiter.take("b")  # buckets are per key


def test_keys_new_prints_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert main(["keys", "new", "ops", "--admin", "--file", str(path)]) == 0
    ops_key = capsys.readouterr().out.strip()
    assert main(["keys", "new", "team-a", "--tasks", "sst2", "team-a-*", "--file", str(path)]) == 0
    team_key = capsys.readouterr().out.strip()
    text = path.read_text()
    assert ops_key not in text and team_key not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auth = Authenticator(load_keys(path))
    assert auth.authenticate(f"Bearer {ops_key}").admin
    assert auth.authenticate(f"Bearer {team_key}").tasks == ("sst2", "team-a-*")
    assert main(["keys", "new", "ops", "--admin", "--file", str(path)]) == 2  # duplicate name
    assert main(["keys", "new", "idle", "--file", str(path)]) == 2  # neither admin nor tasks
    assert "neither" in capsys.readouterr().err
    assert len(json.loads(path.read_text())["keys"]) == 2


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                      ("127.0.0.2", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                      ("example.com", False)])
def test_without_keys_only_loopback_hosts_are_accepted(host, ok, tmp_path):
    if ok:
        Settings(host=host)
    else:
        with pytest.raises(ValueError, match="adamix keys new"):
            Settings(host=host)
    Settings(host=host, api_keys_file=tmp_path / "keys.json")
    Settings(host=host, insecure_no_auth=True)


def test_keys_list_and_revoke_and_a_metrics_only_key(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert main(["keys", "new", "ops", "--admin", "--file", str(path)]) == 0
    assert main(["keys", "new", "prom", "--metrics", "--file", str(path)]) == 0
    prom_key = capsys.readouterr().out.strip().splitlines()[-1]
    auth = Authenticator.from_file(path)
    prom = auth.authenticate(f"Bearer {prom_key}")
    prom.require_metrics()
    with pytest.raises(ForbiddenError):
        prom.require_task("sst2")
    assert main(["keys", "list", "--file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "ops\tadmin" in listing and "prom\tmetrics" in listing and prom_key not in listing
    assert main(["keys", "revoke", "prom", "--file", str(path)]) == 0
    assert main(["keys", "revoke", "nobody", "--file", str(path)]) == 2
    assert auth.reload() is True  # the file changed on disk: the new keys take effect
    with pytest.raises(UnauthorizedError):
        auth.authenticate(f"Bearer {prom_key}")
    path.write_text("{broken")
    with pytest.raises(KeyFileError):
        auth.reload()
    assert [k.principal.name for k in auth.keys] == ["ops"]  # a broken file keeps the keys read before
