"""The README documents every setting and every metric the server really has."""
import re
from pathlib import Path

from server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_setting():
    documented = set(re.findall(r"`(ADAMIX_[A-Z0-9_]+)`", README))
    actual = {f"ADAMIX_{name.upper()}" for name in Settings.model_fields}
    assert actual - documented == set(), "settings missing from the README's configuration table"
    assert documented - actual - {"ADAMIX_API_KEY", "ADAMIX_URL", "ADAMIX_MALLOC_TUNING"} == set(), "README documents settings that do not exist"


def test_readme_lists_every_metric():
    from server.metrics import ServerMetrics

    names = {m.name for m in ServerMetrics().registry.collect()}
    documented = set(re.findall(r"`(adamix_[a-z_]+)", README))
    # prometheus_client reports counters without their _total suffix
    actual = {n if n + "_total" not in documented else n + "_total" for n in names}
    assert actual - documented == set()
