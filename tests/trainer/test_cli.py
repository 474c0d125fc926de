"""`adamix train` / `adamix eval` end to end on real RTE rows with a tiny random backbone."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from adamix import load_backbone, read_adapter_file
from adamix.cli import main


def _train(tiny_bert_dir: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--glue-task", "rte", "--data", str(data), "--backbone", str(tiny_bert_dir),
                 "--train-limit", "32", "--dev-limit", "12", "--batch-size", "8", "--max-seq-len", "48",
                 "--max-steps", "4", "--eval-every", "2", "--no-progress", "--output", str(out), *extra])


def _eval_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_then_eval_on_real_rte_rows(tiny_bert_dir: Path, rte_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out, experts = tmp_path / "rte.safetensors", tmp_path / "rte-experts.safetensors"
    assert _train(tiny_bert_dir, rte_dir, out, "--save-experts", str(experts)) == 0
    _, _, info = load_backbone(tiny_bert_dir)
    adapter = read_adapter_file(out, info)  # validates every key, shape and the backbone fingerprint
    prov = adapter.provenance
    assert prov["dataset"] == "glue/rte" and prov["metric"] == "accuracy" and prov["method"] == "adamix"
    assert prov["steps"] == 4 and prov["seed"] == 0 and prov["train_examples"] == 32
    assert adapter.task.labels == ("entailment", "not_entailment") and adapter.config.num_experts == 4
    log = [json.loads(line) for line in (tmp_path / "rte.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert prov["score"] == max(r["dev_accuracy"] for r in log)
    assert (tmp_path / "rte.png").stat().st_size > 0

    data_args = ["--glue-task", "rte", "--data", str(rte_dir), "--backbone", str(tiny_bert_dir), "--dev-limit", "12"]
    merged = _eval_json(capsys, str(out), *data_args)
    # the merged file scores exactly what training measured (eval mode averages the experts the same way)
    assert merged["score"] == prov["score"] and merged["kind"] == "adapter"
    mixture = _eval_json(capsys, str(experts), *data_args)
    assert mixture["score"] == prov["score"] and mixture["kind"] == "experts"
    routes = _eval_json(capsys, str(experts), *data_args, "--routing", "random", "--draws", "3")["random_routes"]
    assert len(routes["scores"]) == 3 and len(routes["routes"][0]) == 2  # one down expert per layer (2 layers)
    assert routes["worst"] <= routes["mean"] <= routes["best"]
    assert main(["eval", str(out), *data_args]) == 0
    assert "glue/rte dev accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expect", [
    (["--placement", "both"], {"kind": "adapter", "placement": "both", "num_experts": 4}),
    (["--method", "lora", "--lora-targets", "query,key,value"],
     {"kind": "lora", "lora_targets": ("query", "key", "value"), "num_experts": 1}),
])
def test_train_site_options_reach_the_file(tiny_bert_dir: Path, rte_dir: Path, tmp_path: Path, extra: list[str],
                                           expect: dict) -> None:
    out = tmp_path / "rte.safetensors"
    assert _train(tiny_bert_dir, rte_dir, out, *extra) == 0
    config = read_adapter_file(out, load_backbone(tiny_bert_dir)[2]).config
    assert {k: getattr(config, k) for k in expect} == expect


def test_train_refuses_unknown_lora_targets(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--glue-task", "rte", "--data", "RTE", "--output", "x.safetensors",
              "--lora-targets", "query,dense"])
    assert "expected distinct names of query,key,value, got 'query,dense'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--glue-task", "rte", "--output", "x.safetensors"], "needs --data"),
    (["--glue-task", "rte", "--data", "/nonexistent/RTE", "--output", "x.safetensors"], "does not exist"),
    (["--method", "full", "--glue-task", "rte", "--data", "RTE", "--output", "x.safetensors"], "no adapter file"),
    (["--glue-task", "rte", "--data", "RTE"], "--output PATH.safetensors is required"),
])
def test_train_errors_are_reported(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_train_on_csv_with_unknown_dev_label_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (tmp_path / "dev.csv").write_text("text,label\nok,neutral\n")
    code = main(["train", "--train-file", str(tmp_path / "train.csv"), "--dev-file", str(tmp_path / "dev.csv"),
                 "--output", str(tmp_path / "a.safetensors")])
    assert code == 2
    assert "dev.csv row 2: unknown label 'neutral'; known labels are ['neg', 'pos']" in capsys.readouterr().err


def test_eval_refuses_other_task_labels(tiny_bert_dir: Path, rte_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rte.safetensors"
    assert _train(tiny_bert_dir, rte_dir, out, "--max-steps", "1") == 0
    (tmp_path / "dev.csv").write_text("text,label\nok,neg\nfine,pos\n")
    assert main(["eval", str(out), "--dev-file", str(tmp_path / "dev.csv"), "--backbone", str(tiny_bert_dir)]) == 2
    assert "labels ['entailment', 'not_entailment'] differ" in capsys.readouterr().err
    assert main(["eval", str(out), "--glue-task", "rte", "--data", str(rte_dir), "--routing", "random",
                 "--backbone", str(tiny_bert_dir)]) == 2
    assert "needs a --save-experts checkpoint" in capsys.readouterr().err


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[str, dict, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append((self.path, dict(self.headers), body))
        status = 201 if self.headers["Authorization"] == "Bearer sekret" else 401
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"task": self.path.rsplit("/", 1)[-1]}).encode())

    def log_message(self, *args) -> None:
        pass


def test_push_uploads_the_adapter_bytes(tiny_bert_dir: Path, rte_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        out = tmp_path / "rte.safetensors"
        assert _train(tiny_bert_dir, rte_dir, out, "--max-steps", "1", "--push", url, "--api-key", "sekret",
                      "--task-name", "my-rte") == 0
        path, headers, body = _Recorder.received[-1]
        assert path == "/v1/adapters/my-rte" and body == out.read_bytes()
        assert headers["Content-Type"] == "application/octet-stream"
        assert _train(tiny_bert_dir, rte_dir, out, "--max-steps", "1", "--push", url, "--api-key", "wrong") == 2
        assert "answered 401" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


def test_registry_publish(tiny_bert_dir: Path, rte_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from adamix.registry import AdapterRegistry

    out = tmp_path / "rte.safetensors"
    assert _train(tiny_bert_dir, rte_dir, out, "--max-steps", "1", "--registry", str(tmp_path / "reg")) == 0
    _, _, info = load_backbone(tiny_bert_dir)
    registry = AdapterRegistry(tmp_path / "reg", info)  # a fresh process's view of the directory
    active = registry.get("rte").active_record
    assert registry.read_bytes("rte", active.version) == out.read_bytes()
    assert main(["train", "--glue-task", "rte", "--data", str(rte_dir), "--backbone", str(tiny_bert_dir),
                 "--train-limit", "8", "--dev-limit", "4", "--max-steps", "1", "--no-progress",
                 "--output", str(out), "--registry", str(tmp_path / "reg"), "--task-name", "Bad Name!"]) == 2
    assert "task name 'Bad Name!' is invalid" in capsys.readouterr().err
