"""The one free-port helper of the tests and benchmarks."""
from __future__ import annotations

import socket

from benchmarks import procs


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice():
    ports = [procs.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(procs.LOWEST <= p < procs._ephemeral_start() for p in ports)
    for port in ports[:5]:  # each one can be bound, by a server that has not started yet
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_another_socket_holds_is_skipped(monkeypatch):
    with socket.socket() as held, socket.socket() as probe:
        held.bind(("127.0.0.1", 0))
        probe.bind(("127.0.0.1", 0))
        taken, free = held.getsockname()[1], probe.getsockname()[1]
        probe.close()
        draws = iter([taken, free])
        monkeypatch.setattr(procs, "LOWEST", 1024)
        monkeypatch.setattr(procs, "_ephemeral_start", lambda: 65536)
        monkeypatch.setattr(procs.random.SystemRandom, "randrange", lambda self, lo, hi: next(draws))
        assert procs.free_port() == free
