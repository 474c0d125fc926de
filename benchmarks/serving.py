"""Serving benchmarks, side by side in one process (see benchmarks/RESULTS.md for recorded numbers).

    python benchmarks/serving.py [--reps 100] [--tasks 10000] [--active 1000] [--sections 123456]

Real MiniLM (the embedded default backbone), short real sentences (SST-2 dev); synthetic merged adapters of the
file format's exact shapes (random weights: speed does not depend on values). Every comparison is paired:
rounds of one call of each variant, order rotated each round (sections 1 and 2 alternate the variants at every
length group of the batch, ~0.1 s apart); each ratio is the median of the per-round ratios with a bootstrap 95%
interval and the number of pairs (`stats.paired_ratio`); a target is met only when the whole interval is on its
side. The process tunes malloc as `adamix serve` does (`adamix/allocator.py`).
1. merged adapter vs bare backbone forward (64 rows)          target time ratio <= 1.02
   (and that ratio's two factors: the engine with no adapted site vs the bare backbone, the sites vs that engine;
   the bare backbone is Hugging Face's padded forward of the engine's length groups, and the engine skips their
   padded tokens outside self-attention, `server/packing.py`, so its own work can be below 1)
2. 64 rows over 64 tasks vs 64 rows of one task               target throughput ratio >= 0.95
3. vs peft with the same merged LoRA adapters for 64 tasks: mixed batch with adapter_names (target >= 1.0x);
   set_adapter per request under a lock (requests/s, target >= 3x)
4. cold load of one adapter, disk -> resident in the pool     target p99 < 5 ms
5. 10,000 registered tasks, Zipf traffic over 1,000           target >= 0.9x single-task; resident memory
6. tokenisation rows/s by tokenizer workers, against the engine's forward rows/s
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamix import AdaMixConfig, AdapterFile, TaskSpec, allocator, export_peft_lora, load_backbone  # noqa: E402
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
from stats import Interval, paired_ratio  # noqa: E402
from tokenizer_rate import tokenizer_rows_per_s  # noqa: E402

SST2_DEV = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
ROWS = 64  # rows per batch (benchmarks/gpu.py also runs 256)
TASKS = 64  # distinct tasks in a mixed batch: row i uses task i % TASKS


def synthetic_adapter(info, kind: str, r: int, seed: int, labels=("negative", "positive")) -> AdapterFile:
    config = AdaMixConfig(kind=kind, bottleneck=r, lora_r=r, num_experts=1)
    task = TaskSpec("classification", labels, "mean", 128)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in expected_shapes(config, info, task).items()}
    return AdapterFile(config, info, task, tensors, {"benchmark": True})


def paired(variants: dict, reps: int) -> dict[str, dict[str, list[float]]]:
    """CPU and wall seconds of each variant per round: `reps` rounds, each variant once per round.

    A variant is a callable, or a list of pieces that together make one call (a batch's length groups): then
    piece j of every variant runs before piece j + 1 of any, so the variants alternate every ~0.1 s rather
    than every call, and a drift of this shared machine hits them alike (pieces of a variant sum to its time
    for the round). The order rotates every round and piece (A B C, B C A, ...); round k of A and round k of B
    form one pair. CPU time of this process is the primary measure: with one torch thread it is the work done,
    and other processes' load inflates wall time unevenly. One warm-up round first.
    """
    pieces = {name: fn if isinstance(fn, list) else [fn] for name, fn in variants.items()}
    if len({len(p) for p in pieces.values()}) != 1:
        raise ValueError("every variant needs as many pieces")
    names = list(pieces)
    times = {name: {"cpu": [], "wall": []} for name in names}
    for k in range(-1, reps):  # round -1: warm-up, not recorded
        round_cpu, round_wall = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        for j in range(len(pieces[names[0]])):
            at = (k + j) % len(names)
            for name in names[at:] + names[:at]:
                start, start_cpu = time.perf_counter(), time.process_time()
                pieces[name][j]()
                round_cpu[name] += time.process_time() - start_cpu
                round_wall[name] += time.perf_counter() - start
        if k >= 0:
            for name in names:
                times[name]["cpu"].append(round_cpu[name])
                times[name]["wall"].append(round_wall[name])
    return times


def _seconds(t: dict, name: str) -> str:
    cpu, wall = t[name]["cpu"], t[name]["wall"]
    return f"{statistics.median(cpu):.4f} / {min(cpu):.4f} / {statistics.median(wall):.4f}"


def ratio(t: dict, num: str, den: str, measure: str = "cpu") -> Interval:
    """Median over the rounds of time(num) / time(den), with its bootstrap 95% interval (`stats.paired_ratio`)."""
    return paired_ratio(t[num][measure], t[den][measure])


def rss_mib() -> float:
    return next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def sentences() -> list[str]:
    """SST-2 dev sentences (5 to 55 tokens), or, where the shared data is absent (a lent GPU machine), made-up
    sentences of the same spread of lengths."""
    if SST2_DEV.is_file():
        return [line.split("\t")[0].strip() for line in SST2_DEV.read_text().splitlines()[1:]]
    words = "the film a plot is of and cast funny dull scene with its but not very long story acting".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, int(n))) for n in rng.integers(4, 50, 872)]


class Bench:
    """The backbone on `device` in `dtype` under an engine; `rows` rows per batch. On a CPU ratios are of this
    process's CPU time, on an accelerator of wall time (its kernels run asynchronously)."""

    def __init__(self, reps: int, backbone: Path | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, rows: int = ROWS) -> None:
        self.reps, self.backbone, self.device, self.dtype, self.n = reps, backbone, torch.device(device), dtype, rows
        self.measure = "cpu" if self.device.type == "cpu" else "wall"
        self.results: dict[str, object] = {}
        self.sentences = sentences()
        self.model, self.tokenizer, self.info = self.load()
        self.engine = Engine(self.model, self.tokenizer, self.info,
                             Settings(demo_adapters=None, max_batch_rows=rows, max_inputs_per_request=rows),
                             ServerMetrics())
        self.pool = self.engine.executor.pool
        self.batch = (self.sentences * (1 + rows // len(self.sentences)))[:rows]

    def load(self):
        model, tokenizer, info = load_backbone(self.backbone)
        return model.to(self.device, self.dtype), tokenizer, info

    def record(self, name: str, value) -> None:
        self.results[name] = value
        print(f"{name}: {value}", flush=True)

    def target(self, name: str, t: dict, num: str, den: str, at_most: float | None = None,
               at_least: float | None = None) -> Interval:
        """Record ratio time(num) / time(den) (CPU on a CPU, else wall; and wall for reference) against its target."""
        r = ratio(t, num, den, self.measure)
        if at_most is not None:
            verdict = f"target <= {at_most}: {'met' if r.at_most(at_most) else 'NOT met'}"
        else:
            verdict = f"target >= {at_least}: {'met' if r.at_least(at_least) else 'NOT met'}"
        self.record(f"{name} ({self.measure})", f"{r}  {verdict}")
        if self.measure == "cpu":
            self.record(f"{name} (wall)", str(ratio(t, num, den, "wall")))
        return r

    def serve(self, task: str, adapter: AdapterFile, version: str = "v") -> ServedAdapter:
        return prepare(AdapterKey(task, version), adapter, self.engine.limits)

    def rows(self, adapters: list[ServedAdapter], texts: list[str]) -> list[Row]:
        return [self.engine.admission.encode(a, [TextInput(text=t)])[0] for a, t in zip(adapters, texts)]

    def run(self, rows: list[Row]) -> list[dict]:
        """One forward of admitted rows, shaped into predictions as the server does."""
        return [predictions(r.adapter.task, [x])[0] for r, x in zip(rows, self.engine.executor.run_batch(rows))]

    # ------------------------------------------------------------------ 1 + 2

    def grouped(self, texts: list[str]) -> tuple[list[list[int]], list[dict]]:
        """The length groups (row indices) the engine forms for these texts, and each group's tokenised, padded
        inputs."""
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
        groups = length_groups(lengths, self.engine.executor._forward_cost_tokens)
        return groups, [self.tokenizer([texts[i] for i in g], padding=True, truncation=True, max_length=128,
                                       return_tensors="pt").to(self.device) for g in groups]

    def forward_overhead_and_mixing(self) -> None:
        """Sections 1 and 2, interleaved by length group: piece j of a variant is the batch's j-th length group
        (the one forward the engine runs for those rows), so every variant does exactly the engine's forwards."""
        bare = self.load()[0]
        groups, encs = self.grouped(self.batch)  # the bare backbone gets the engine's length groups too
        adapters = [synthetic_adapter(self.info, "adapter", 16, i) for i in range(TASKS)]
        head_w, head_b = (adapters[0].tensors[k].to(self.device, self.dtype) for k in ("head.weight", "head.bias"))

        def bare_forward(enc):
            with torch.inference_mode():
                out = bare(**enc)
                pooled = pool_states(out.last_hidden_state, enc["attention_mask"], "mean")  # (b, d)
                torch.softmax(F.linear(pooled, head_w, head_b), -1).tolist()

        def engine_pieces(rows: list[Row]) -> list:
            pieces = [[rows[i] for i in g] for g in groups]
            cost = self.engine.executor._forward_cost_tokens
            if any(len(length_groups([len(r.input_ids) for r in p], cost)) != 1 for p in pieces):
                raise RuntimeError("the engine would split a length group again: pieces would not be its forwards")
            return [lambda p=p: self.run(p) for p in pieces]

        one = self.rows([self.serve("t0", adapters[0])] * self.n, self.batch)
        # The same adapter's head with no adapted sites: the engine's own work (padding, the plan, pooling, the
        # heads, response dicts, metrics) without the sites' arithmetic, to split section 1's ratio in two.
        head_only = replace(self.serve("t0-head", adapters[0]), sites={})
        served = [self.serve(f"t{i}", a) for i, a in enumerate(adapters)]
        mixed = self.rows([served[i % TASKS] for i in range(self.n)], self.batch)
        t = paired({"bare": [lambda e=e: bare_forward(e) for e in encs], "one": engine_pieces(one),
                    "head_only": engine_pieces(self.rows([head_only] * self.n, self.batch)),
                    "mixed": engine_pieces(mixed)}, self.reps)
        self.record(f"1. bare backbone forward, {self.n} rows in {len(groups)} length groups (s: median CPU / "
                    "fastest CPU / median wall)", _seconds(t, "bare"))
        self.record(f"1. merged adapter r=16, one task, {self.n} rows (s)", _seconds(t, "one"))
        self.target("1. time merged adapter / bare backbone", t, "one", "bare", at_most=1.02)
        self.record(f"1. of which the engine's own work: engine, no adapted site / bare backbone ({self.measure})",
                    str(ratio(t, "head_only", "bare", self.measure)))
        self.record(f"1. of which the adapter sites: merged adapter / engine, no adapted site ({self.measure})",
                    str(ratio(t, "one", "head_only", self.measure)))
        self.record(f"2. {self.n} rows over {TASKS} tasks (s)", _seconds(t, "mixed"))
        self.target(f"2. throughput {TASKS} tasks / 1 task", t, "one", "mixed", at_least=0.95)

    # ------------------------------------------------------------------ 3

    def versus_peft(self) -> None:
        from peft import PeftModel

        adapters = [synthetic_adapter(self.info, "lora", 4, 100 + i) for i in range(TASKS)]
        base = self.load()[0]
        load_times = []
        with tempfile.TemporaryDirectory() as tmp:
            dirs = [export_peft_lora(a, Path(tmp) / f"t{i}") for i, a in enumerate(adapters)]
            start = time.perf_counter()
            peft_model = PeftModel.from_pretrained(base, dirs[0], adapter_name="t0")
            load_times.append(time.perf_counter() - start)
            for i in range(1, TASKS):
                start = time.perf_counter()
                peft_model.load_adapter(dirs[i], adapter_name=f"t{i}")
                load_times.append(time.perf_counter() - start)
        peft_model.eval()
        heads = [(a.tensors["head.weight"].to(self.device, self.dtype), a.tensors["head.bias"].to(self.device, self.dtype))
                 for a in adapters]
        self.record("3. peft load_adapter p50 (ms)", round(1000 * statistics.median(load_times), 1))
        names = [f"t{i % TASKS}" for i in range(self.n)]  # row i's adapter
        start = time.perf_counter()
        for name in names[:16]:
            peft_model.set_adapter(name)
        self.record(f"3. peft set_adapter with {TASKS} adapters loaded (ms)",
                    round(1000 * (time.perf_counter() - start) / 16, 1))

        # Mixed batch: 64 rows, row i with adapter i; peft as users run it (one padded batch) and with
        # the engine's length groups (isolates the cost of the per-row adapter mechanism).
        whole = self.tokenizer(self.batch, padding=True, truncation=True, max_length=128,
                               return_tensors="pt").to(self.device)
        split, split_encs = self.grouped(self.batch)

        def peft_batch(enc, rows: list[int]):
            with torch.inference_mode():
                out = peft_model(**enc, adapter_names=[names[i] for i in rows])
                pooled = pool_states(out.last_hidden_state, enc["attention_mask"], "mean")  # (b, d)
                return [torch.softmax(F.linear(pooled[j], *heads[i % TASKS]), -1).tolist() for j, i in enumerate(rows)]

        peft_one_batch = lambda: peft_batch(whole, list(range(self.n)))  # noqa: E731
        peft_grouped = lambda: [peft_batch(enc, g) for enc, g in zip(split_encs, split)]  # noqa: E731
        served = [self.serve(f"l{i}", a) for i, a in enumerate(adapters)]
        mixed = self.rows([served[i % TASKS] for i in range(self.n)], self.batch)
        t = paired({"peft": peft_one_batch, "peft_grouped": peft_grouped, "ours": lambda: self.run(mixed)},
                   max(2, self.reps // 5))
        self.record(f"3. peft adapter_names, {self.n} rows / {TASKS} adapters, one padded batch (s)", _seconds(t, "peft"))
        self.record("3. peft adapter_names, same length groups as ours (s)", _seconds(t, "peft_grouped"))
        self.record(f"3. ours, same {TASKS} LoRA tasks mixed (s)", _seconds(t, "ours"))
        self.target("3. throughput ours / peft adapter_names one batch", t, "peft", "ours", at_least=1.0)
        self.target("3. throughput ours / peft adapter_names same groups", t, "peft_grouped", "ours", at_least=1.0)

        # Request serving: 64 concurrent clients, one short sentence per request, each client its own task.
        requests = [(i % TASKS, self.sentences[(ROWS + i) % len(self.sentences)]) for i in range(4 * TASKS)]
        lock = threading.Lock()

        def peft_request(task: int, text: str):
            with lock:
                peft_model.set_adapter(names[task])
                e = self.tokenizer(text, truncation=True, max_length=128, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    out = peft_model(**e)
                    pooled = pool_states(out.last_hidden_state, e["attention_mask"], "mean")
                    return torch.softmax(F.linear(pooled, *heads[task]), -1).tolist()

        peft_n = TASKS
        start = time.perf_counter()
        for task, text in requests[:peft_n]:
            peft_request(task, text)
        peft_rps = peft_n / (time.perf_counter() - start)
        ours_rps = asyncio.run(self._closed_loop(served, requests))
        self.record("3. peft set_adapter-per-request server (requests/s)", round(peft_rps, 1))
        self.record(f"3. ours, {TASKS} concurrent clients (requests/s)", round(ours_rps, 1))
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
            p99 = np.percentile(ms, 99)
            self.record(f"4. cold load disk -> resident, adapter r=16, {name} ms (p50 / p99 / max; {n} loads)",
                        f"{np.percentile(ms, 50):.2f} / {p99:.2f} / {ms.max():.2f}  target p99 < 5 ms: "
                        f"{'met' if p99 < 5 else 'NOT met'}")

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
            picks = rng.choice(active, self.n, p=weights)
            distinct.append(len(set(picks.tolist())))
            texts = [self.sentences[j] for j in rng.choice(len(self.sentences), self.n)]
            return self.run(self.rows([resolve(hot[p]) for p in picks], texts))

        def single_batch():
            texts = [self.sentences[j] for j in rng.choice(len(self.sentences), self.n)]
            return self.run(self.rows([resolve(hot[0])] * self.n, texts))

        t = paired({"zipf": zipf_batch, "single": single_batch}, max(2, self.reps // 3))
        self.record(f"5. 64-row batch, Zipf(1.1) over {active} of {len(names)} tasks (s)", _seconds(t, "zipf"))
        self.record("5. 64-row batch, one task (s)", _seconds(t, "single"))
        self.target("5. throughput Zipf / single task", t, "single", "zipf", at_least=0.9)
        self.record("5. distinct tasks per Zipf batch (mean)", round(statistics.mean(distinct), 1))
        self.record("5. adapters read from disk during the timed batches", cache.loads - loads_before)
        self.record("5. host tier: adapters / MiB", f"{len(cache)} / {cache.nbytes / 2**20:.1f}")
        self.record("5. device pool: slots / MiB allocated",
                    f"{self.pool.num_slots} / {self.pool.nbytes() / 2**20:.1f}")
        self.record("5. process RSS before / after traffic; max (MiB)", f"{rss_before:.0f} / {rss_mib():.0f}; "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100,
                        help="paired rounds for sections 1 and 2 (section 3: a fifth, section 5: a third)")
    parser.add_argument("--tasks", type=int, default=10_000, help="registered tasks for section 5")
    parser.add_argument("--active", type=int, default=1_000, help="tasks receiving Zipf traffic in section 5")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "adamix-bench",
                        help="where the section-5 registry is built once and reused")
    parser.add_argument("--sections", default="123456", help="which sections to run, e.g. 14")
    parser.add_argument("--tokenizer-workers", type=int, nargs="+", default=[0, 1, 2], help="section 6")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    allocator.tune()  # as `adamix serve` does, for every variant alike
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
    if "6" in args.sections:
        tokenizer_rows_per_s(bench, args.tokenizer_workers)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(json.dumps(bench.results, indent=1))


if __name__ == "__main__":
    main()
