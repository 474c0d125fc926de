"""Serving benchmarks, side by side in one process (see benchmarks/RESULTS.md for recorded numbers).

    python benchmarks/serving.py [--reps 5] [--tasks 10000] [--active 1000]

Real MiniLM (the embedded default backbone), short real sentences (SST-2 dev). Adapters are synthetic
merged adapters of the file format's exact shapes (random weights: speed does not depend on values).
1. merged adapter vs bare backbone forward (64 rows)         target overhead <= 5%
2. 64 rows over 64 tasks vs 64 rows of one task              target >= 0.9x
3. vs peft with the same merged LoRA adapters for 64 tasks:
   set_adapter per request under a lock (requests/s)       target >= 3x
   mixed batch with adapter_names (64 rows, 64 adapters)     target parity
4. cold load of one adapter, disk -> resident in the pool    target p99 < 10 ms
5. 10,000 registered tasks, Zipf traffic over 1,000          target >= 0.9x single-task; resident memory
Ratios come from medians of interleaved repetitions, so load from other processes hits both sides alike.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamix import AdaMixConfig, AdapterFile, TaskSpec, export_peft_lora, load_backbone  # noqa: E402
from adamix.adapter_file import adapter_to_bytes, expected_shapes  # noqa: E402
from adamix.registry import AdapterRegistry  # noqa: E402
from adamix.task import pool_states  # noqa: E402
from server.admission import Row  # noqa: E402
from server.cache import HostCache  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.executor import length_groups  # noqa: E402
from server.metrics import ServerMetrics  # noqa: E402
from server.responses import predictions  # noqa: E402
from server.schemas import TextInput  # noqa: E402
from server.served import AdapterKey, ServedAdapter, prepare  # noqa: E402
from server.settings import Settings  # noqa: E402

SST2_DEV = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
ROWS = 64


def synthetic_adapter(info, kind: str, r: int, seed: int, labels=("negative", "positive")) -> AdapterFile:
    config = AdaMixConfig(kind=kind, bottleneck=r, lora_r=r, num_experts=1)
    task = TaskSpec("classification", labels, "mean", 128)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in expected_shapes(config, info, task).items()}
    return AdapterFile(config, info, task, tensors, {"benchmark": True})


def interleaved(variants: dict, reps: int) -> dict[str, float]:
    """Median CPU seconds per call of each variant, calls interleaved (one warm-up each).

    CPU time of this process, not wall time: the machine is shared, and other processes' load inflates
    wall time unevenly; with one torch thread, CPU time is the work done. Wall medians go in `WALL`.
    """
    for fn in variants.values():
        fn()
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    WALL.update({name: statistics.median(t) for name, t in wall.items()})
    FASTEST.update({name: min(t) for name, t in cpu.items()})
    return {name: statistics.median(t) for name, t in cpu.items()}


WALL: dict[str, float] = {}  # median wall seconds
FASTEST: dict[str, float] = {}  # fastest CPU seconds (interference only ever adds time)


def _pair(t: dict[str, float], name: str) -> str:
    return f"{t[name]:.3f} / {FASTEST[name]:.3f} / {WALL[name]:.3f}"


def _ratio(t: dict[str, float], num: str, den: str) -> str:
    return f"{t[num] / t[den]:.3f}x / {FASTEST[num] / FASTEST[den]:.3f}x / {WALL[num] / WALL[den]:.3f}x"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, reps: int) -> None:
        self.reps = reps
        self.results: dict[str, object] = {}
        self.sentences = [line.split("\t")[0].strip() for line in SST2_DEV.read_text().splitlines()[1:]]
        self.model, self.tokenizer, self.info = load_backbone()
        self.engine = Engine(self.model, self.tokenizer, self.info,
                             Settings(demo_adapters=None, max_batch_rows=ROWS, max_inputs_per_request=ROWS),
                             ServerMetrics())
        self.pool = self.engine.executor.pool
        self.batch = self.sentences[:ROWS]

    def record(self, name: str, value) -> None:
        self.results[name] = value
        print(f"{name}: {value}", flush=True)

    def serve(self, task: str, adapter: AdapterFile, version: str = "v") -> ServedAdapter:
        return prepare(AdapterKey(task, version), adapter, self.engine.limits)

    def rows(self, adapters: list[ServedAdapter], texts: list[str]) -> list[Row]:
        return [self.engine.admission.encode(a, [TextInput(text=t)])[0] for a, t in zip(adapters, texts)]

    def run(self, rows: list[Row]) -> list[dict]:
        """One forward of admitted rows, shaped into predictions as the server does."""
        return [predictions(r.adapter.task, [x])[0] for r, x in zip(rows, self.engine.executor.run_batch(rows))]

    # ------------------------------------------------------------------ 1 + 2

    def grouped(self, texts: list[str]) -> list[dict]:
        """Tokenised, padded inputs for the same length groups the engine forms for these texts."""
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
        return [self.tokenizer([texts[i] for i in g], padding=True, truncation=True, max_length=128,
                               return_tensors="pt") for g in length_groups(lengths, self.engine.executor._forward_cost_tokens)]

    def forward_overhead_and_mixing(self) -> None:
        bare, _, _ = load_backbone()
        groups = self.grouped(self.batch)  # the bare backbone gets the engine's length groups too
        adapters = [synthetic_adapter(self.info, "adapter", 16, i) for i in range(ROWS)]
        head_w, head_b = adapters[0].tensors["head.weight"], adapters[0].tensors["head.bias"]

        def bare_forward():
            with torch.inference_mode():
                for enc in groups:
                    out = bare(**enc)
                    pooled = pool_states(out.last_hidden_state, enc["attention_mask"], "mean")  # (b, d)
                    torch.softmax(F.linear(pooled, head_w, head_b), -1).tolist()

        one = self.rows([self.serve("t0", adapters[0])] * ROWS, self.batch)
        mixed = self.rows([self.serve(f"t{i}", a) for i, a in enumerate(adapters)], self.batch)
        t = interleaved({"bare": bare_forward, "one": lambda: self.run(one), "mixed": lambda: self.run(mixed)},
                        self.reps)
        self.record("1. bare backbone forward, 64 rows (s: median CPU / fastest CPU / median wall)", _pair(t, "bare"))
        self.record("1. merged adapter r=16, one task, 64 rows (s: median CPU / fastest CPU / median wall)", _pair(t, "one"))
        self.record("1. adapter overhead vs bare (median CPU / fastest CPU / median wall)",
                    " / ".join(f"{(d['one'] / d['bare'] - 1) * 100:+.1f}%" for d in (t, FASTEST, WALL)))
        self.record("2. 64 rows over 64 tasks (s: median CPU / fastest CPU / median wall)", _pair(t, "mixed"))
        self.record("2. throughput 64 tasks / 1 task (median CPU / fastest CPU / median wall)", _ratio(t, "one", "mixed"))

    # ------------------------------------------------------------------ 3

    def versus_peft(self) -> None:
        from peft import PeftModel

        adapters = [synthetic_adapter(self.info, "lora", 4, 100 + i) for i in range(ROWS)]
        base, _, _ = load_backbone()
        load_times = []
        with tempfile.TemporaryDirectory() as tmp:
            dirs = [export_peft_lora(a, Path(tmp) / f"t{i}") for i, a in enumerate(adapters)]
            start = time.perf_counter()
            peft_model = PeftModel.from_pretrained(base, dirs[0], adapter_name="t0")
            load_times.append(time.perf_counter() - start)
            for i in range(1, ROWS):
                start = time.perf_counter()
                peft_model.load_adapter(dirs[i], adapter_name=f"t{i}")
                load_times.append(time.perf_counter() - start)
        peft_model.eval()
        heads = [(a.tensors["head.weight"], a.tensors["head.bias"]) for a in adapters]
        self.record("3. peft load_adapter p50 (ms)", round(1000 * statistics.median(load_times), 1))
        names = [f"t{i}" for i in range(ROWS)]
        start = time.perf_counter()
        for name in names[:16]:
            peft_model.set_adapter(name)
        self.record(f"3. peft set_adapter with {ROWS} adapters loaded (ms)",
                    round(1000 * (time.perf_counter() - start) / 16, 1))

        # Mixed batch: 64 rows, row i with adapter i; peft as users run it (one padded batch) and with
        # the engine's length groups (isolates the cost of the per-row adapter mechanism).
        whole = self.tokenizer(self.batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
        lengths = [len(ids) for ids in self.tokenizer(self.batch, truncation=True, max_length=128)["input_ids"]]
        split = length_groups(lengths, self.engine.executor._forward_cost_tokens)
        split_encs = self.grouped(self.batch)

        def peft_batch(enc, rows: list[int]):
            with torch.inference_mode():
                out = peft_model(**enc, adapter_names=[names[i] for i in rows])
                pooled = pool_states(out.last_hidden_state, enc["attention_mask"], "mean")  # (b, d)
                return [torch.softmax(F.linear(pooled[j], *heads[i]), -1).tolist() for j, i in enumerate(rows)]

        def peft_one_batch():
            return peft_batch(whole, list(range(ROWS)))

        def peft_grouped():
            return [peft_batch(enc, g) for enc, g in zip(split_encs, split)]

        served = [self.serve(f"l{i}", a) for i, a in enumerate(adapters)]
        mixed = self.rows(served, self.batch)
        t = interleaved({"peft": peft_one_batch, "peft_grouped": peft_grouped, "ours": lambda: self.run(mixed)},
                        self.reps)
        self.record("3. peft adapter_names, 64 rows / 64 adapters, one padded batch (s: median CPU / fastest CPU / median wall)",
                    _pair(t, "peft"))
        self.record("3. peft adapter_names, same length groups as ours (s: median CPU / fastest CPU / median wall)", _pair(t, "peft_grouped"))
        self.record("3. ours, same 64 LoRA tasks mixed (s: median CPU / fastest CPU / median wall)", _pair(t, "ours"))
        self.record("3. throughput ours / peft adapter_names one batch (median CPU / fastest CPU / median wall)", _ratio(t, "peft", "ours"))
        self.record("3. throughput ours / peft adapter_names same groups (median CPU / fastest CPU / median wall)",
                    _ratio(t, "peft_grouped", "ours"))

        # Request serving: 64 concurrent clients, one short sentence per request, each client its own task.
        requests = [(i % ROWS, self.sentences[ROWS + i]) for i in range(4 * ROWS)]
        lock = threading.Lock()

        def peft_request(task: int, text: str):
            with lock:
                peft_model.set_adapter(names[task])
                e = self.tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
                with torch.inference_mode():
                    out = peft_model(**e)
                    pooled = pool_states(out.last_hidden_state, e["attention_mask"], "mean")
                    return torch.softmax(F.linear(pooled, *heads[task]), -1).tolist()

        peft_n = ROWS
        start = time.perf_counter()
        for task, text in requests[:peft_n]:
            peft_request(task, text)
        peft_rps = peft_n / (time.perf_counter() - start)
        ours_rps = asyncio.run(self._closed_loop(served, requests))
        self.record("3. peft set_adapter-per-request server (requests/s)", round(peft_rps, 1))
        self.record("3. ours, 64 concurrent clients (requests/s)", round(ours_rps, 1))
        self.record("3. requests/s ours / peft set_adapter", f"{ours_rps / peft_rps:.2f}x")

    async def _closed_loop(self, adapters, requests) -> float:
        await self.engine.start()
        try:
            clients: dict[int, list[str]] = {}
            for task, text in requests:
                clients.setdefault(task, []).append(text)

            async def client(task: int, texts: list[str]):
                for text in texts:
                    logits = await self.engine.predict(adapters[task], [TextInput(text=text)], f"client{task}")
                    predictions(adapters[task].task, logits)

            await client(0, [requests[0][1]])  # warm-up
            start = time.perf_counter()
            await asyncio.gather(*(client(t, texts) for t, texts in clients.items()))
            return len(requests) / (time.perf_counter() - start)
        finally:
            await self.engine.stop()

    # ------------------------------------------------------------------ 4

    def cold_load(self, n: int = 200) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            registry = AdapterRegistry(tmp, self.info)
            versions = [registry.publish(f"cold{i}", adapter_to_bytes(synthetic_adapter(self.info, "adapter", 16,
                                                                                         1000 + i))).version
                        for i in range(n)]
            warm = synthetic_adapter(self.info, "adapter", 16, 999)  # as the server's start-up warm-up does:
            self.pool.acquire([self.serve("warm", warm)])  # allocate the pool's site tensors
            wall, cpu = [], []
            for i, version in enumerate(versions):
                start, start_cpu = time.perf_counter(), time.process_time()
                adapter = registry.load(f"cold{i}", version)  # read + sha256 + full validation
                self.pool.acquire([self.serve(f"cold{i}", adapter, version)])  # prepared, into a pool slot
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        for name, times in (("wall", wall), ("CPU", cpu)):
            ms = np.array(times) * 1000
            self.record(f"4. cold load disk -> resident, adapter r=16, {name} ms (p50 / p99 / max)",
                        f"{np.percentile(ms, 50):.2f} / {np.percentile(ms, 99):.2f} / {ms.max():.2f}")

    # ------------------------------------------------------------------ 5

    def zipf(self, tasks: int, active: int, cache_root: Path) -> None:
        root = cache_root / f"zipf-{tasks}-{self.info.fingerprint[:12]}"
        start = time.perf_counter()
        registry = AdapterRegistry(root, self.info)
        self.record(f"5. registry open + verify ({len(registry)} tasks) (s)", round(time.perf_counter() - start, 2))
        if len(registry) < tasks:
            start = time.perf_counter()
            for i in range(len(registry), tasks):
                registry.publish(f"task{i:05d}", adapter_to_bytes(synthetic_adapter(self.info, "adapter", 4, 5000 + i)))
            self.record(f"5. publish {tasks} tasks, once, cached in {root} (s)", round(time.perf_counter() - start, 1))
        rss_before = rss_mib()
        cache = HostCache(registry, self.engine.limits, 512 << 20, self.engine.executor.metrics)
        rng = np.random.default_rng(0)
        names = registry.tasks()
        hot = [names[i] for i in rng.choice(len(names), active, replace=False)]
        weights = 1.0 / np.arange(1, active + 1) ** 1.1
        weights /= weights.sum()

        def resolve(task: str) -> ServedAdapter:
            return cache.get_sync(AdapterKey(task, registry.get(task).active))

        start = time.perf_counter()
        for task in hot:  # steady state: the active tasks' adapters sit in the host tier (~25 KiB each)
            resolve(task)
        self.record(f"5. first read of the {active} active tasks into the host tier (s)",
                    round(time.perf_counter() - start, 2))
        loads_before = cache.loads

        distinct: list[int] = []

        def zipf_batch():
            picks = rng.choice(active, ROWS, p=weights)
            distinct.append(len(set(picks.tolist())))
            texts = [self.sentences[j] for j in rng.choice(len(self.sentences), ROWS)]
            return self.run(self.rows([resolve(hot[p]) for p in picks], texts))

        def single_batch():
            texts = [self.sentences[j] for j in rng.choice(len(self.sentences), ROWS)]
            return self.run(self.rows([resolve(hot[0])] * ROWS, texts))

        t = interleaved({"zipf": zipf_batch, "single": single_batch}, 2 * self.reps)
        self.record(f"5. 64-row batch, Zipf(1.1) over {active} of {len(names)} tasks (s: median CPU / fastest CPU / median wall)",
                    _pair(t, "zipf"))
        self.record("5. 64-row batch, one task (s: median CPU / fastest CPU / median wall)", _pair(t, "single"))
        self.record("5. throughput Zipf / single task (median CPU / fastest CPU / median wall)", _ratio(t, "single", "zipf"))
        self.record("5. distinct tasks per Zipf batch (mean)", round(statistics.mean(distinct), 1))
        self.record("5. adapters read from disk during the timed batches", cache.loads - loads_before)
        self.record("5. host tier: adapters / MiB", f"{len(cache)} / {cache.nbytes / 2**20:.1f}")
        self.record("5. device pool: slots / MiB allocated",
                    f"{self.pool.num_slots} / {self.pool.nbytes() / 2**20:.1f}")
        self.record("5. process RSS before / after traffic (MiB)", f"{rss_before:.0f} / {rss_mib():.0f}")
        self.record("5. process max RSS (MiB)", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per comparison")
    parser.add_argument("--tasks", type=int, default=10_000, help="registered tasks for section 5")
    parser.add_argument("--active", type=int, default=1_000, help="tasks receiving Zipf traffic in section 5")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "adamix-bench",
                        help="where the section-5 registry is built once and reused")
    parser.add_argument("--sections", default="12345", help="which sections to run, e.g. 14")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench = Bench(args.reps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, pool slots {bench.pool.num_slots}")
    start = time.perf_counter()
    if "1" in args.sections or "2" in args.sections:
        bench.forward_overhead_and_mixing()
    if "3" in args.sections:
        bench.versus_peft()
    if "4" in args.sections:
        bench.cold_load()
    if "5" in args.sections:
        bench.zipf(args.tasks, args.active, args.cache)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(json.dumps(bench.results, indent=1))


if __name__ == "__main__":
    main()
