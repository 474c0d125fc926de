"""Hot swap against a real server: versions uploaded and rolled back every 200 ms under continuous load."""
from __future__ import annotations

import hashlib
import threading
import time

import httpx
import pytest

from tests.integration.conftest import ADMIN, OCTET, TENANT, offline_scores

pytestmark = pytest.mark.slow
TEXTS = ["a gripping, funny and humane film", "the plot is thin"]


def test_every_response_comes_from_exactly_one_version_while_versions_swap(tmp_path, start_server, versions,
                                                                            ops_backbone):
    server = start_server(tmp_path / "reg", max_wait_ms=5)
    reference = {hashlib.sha256(data).hexdigest()[:16]: offline_scores(ops_backbone, adapter, TEXTS)
                 for adapter, data in versions}
    ids = list(reference)
    admin = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
    assert admin.put("/v1/adapters/team-swap", content=versions[0][1], headers=OCTET).status_code == 201
    stop, responses, failures = threading.Event(), [], []

    def predict_forever() -> None:
        with httpx.Client(base_url=server.url, headers=TENANT, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/team-swap/predict", json={"inputs": TEXTS})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                (responses if r.status_code == 200 else failures).append(r.json() if r.status_code == 200
                                                                         else r.text)

    clients = [threading.Thread(target=predict_forever) for _ in range(4)]
    for c in clients:
        c.start()
    swaps = []
    try:
        for step in range(16):  # upload the two new versions, then roll back and forth, re-uploading too
            time.sleep(0.2)
            if step < 2:
                r = admin.put("/v1/adapters/team-swap", content=versions[step + 1][1], headers=OCTET)
            elif step % 4 == 0:
                r = admin.put("/v1/adapters/team-swap", content=versions[step % 3][1], headers=OCTET)  # idempotent
            else:
                r = admin.post("/v1/adapters/team-swap/activate", json={"version": ids[step % 3]})
            assert r.status_code in (200, 201), r.text
            swaps.append(r.json()["version"])
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
        admin.close()
    assert failures == []
    assert len(responses) >= 20 and len(set(swaps)) == 3
    seen = set()
    for body in responses:
        version = body["version"]
        assert version in reference
        seen.add(version)
        got = [list(p["scores"].values()) for p in body["predictions"]]
        matches = [v for v, ref in reference.items()
                   if all(g == pytest.approx(r, abs=1e-5) for g, r in zip(got, ref))]
        assert matches == [version], (version, matches)  # its own version's offline output, and no other's
    assert len(seen) >= 2  # the swaps really happened under load
