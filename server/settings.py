"""Server settings: defaults < `ADAMIX_*` environment variables < `adamix serve` flags."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_ADAPTERS_DIR = Path(__file__).resolve().parent / "demo_adapters"


class Settings(BaseSettings):
    """Everything `create_app` needs; every field can be set as `ADAMIX_<FIELD>` (lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="ADAMIX_", extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    backbone: Path | None = Field(None, description="Local Hugging Face model directory; None = embedded MiniLM.")
    registry: Path = Field(Path("adamix-registry"), description="Adapter registry directory (created if missing).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Backbone and pool dtype; auto = float16 on cuda, float32 on cpu.")
    demo_adapters: Path | None = Field(DEMO_ADAPTERS_DIR, description="Adapters installed into a fresh registry.")
    verify_registry: bool = Field(True, description="Hash-check every stored blob at start-up.")
    registry_poll_s: float = Field(1.0, gt=0, le=60, description="How often the registry's generation is checked "
                                                                "for changes other replicas made (bounded staleness).")

    max_batch_rows: int = Field(64, ge=1, le=4096, description="Most input rows one backbone forward takes.")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a batch waits for more requests.")
    max_queue_requests: int = Field(1024, ge=1, description="Queued requests beyond which requests get 503.")
    max_queue_tokens: int = Field(262_144, ge=1, description="Queued tokens (after truncation, all tenants) beyond "
                                                            "which requests get 503.")
    max_tenant_queue_tokens: int = Field(32_768, ge=1, description="Queued tokens one API key may have; beyond it "
                                                                  "that key gets 429 with Retry-After.")
    max_inputs_per_request: int | None = Field(None, ge=1, description="Most inputs in one predict request; "
                                                                      "default max_batch_rows.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest text (characters) one input may carry.")
    max_seq_len: int = Field(512, ge=8, description="Token cap on top of each task's own max_seq_len.")
    tokenizer_workers: int = Field(
        0, ge=0, le=256, description="Tokenizer worker processes. 0 = one tokenizer thread in the server process "
                                     "(plenty beside a CPU backbone, whose forward is far slower); on an accelerator "
                                     "use about the CPU cores the server may take, less one for the event loop "
                                     "(benchmarks/RESULTS.md: rows/s per worker against the forward's). The "
                                     "tokenizer holds the GIL, so only processes tokenise in parallel.")

    device_pool_mb: float = Field(512, gt=0, description="Device memory budget for resident adapters (MiB).")
    max_adapter_rank: int = Field(48, ge=1, description="Largest adapter bottleneck / LoRA rank the pool holds.")
    max_labels: int = Field(64, ge=2, description="Largest label count a served classification head may have.")
    host_cache_mb: float = Field(512, gt=0, description="Host memory budget for parsed adapters (MiB).")
    pinned_tasks: list[str] = Field(default_factory=list, description="Tasks kept resident once loaded.")
    api_keys_file: Path | None = Field(
        None, description="JSON file of bearer API keys (`adamix keys new` writes it): "
                          '{"keys": [{"name", "sha256", "admin": bool, "tasks": [pattern, ...]}]}. Without it every '
                          "route is open and the server refuses a non-loopback host (see insecure_no_auth).")
    insecure_no_auth: bool = Field(
        False, description="Serve without API keys on a non-loopback host (e.g. behind an authenticating gateway "
                           "on a private network). Every route, uploads included, is then open to the network.")
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="Requests per second each API key (or, without keys, the whole server) may make "
                                "on non-public routes; beyond it 429 with Retry-After. None = no limit.")
    rate_limit_burst: int = Field(20, ge=1, description="Token-bucket size of the per-key rate limit.")
    rate_limit_unit: Literal["requests", "rows", "tokens"] = Field(
        "requests", description="What the per-key rate limit counts on predict routes: requests, input rows, "
                                "or tokens after truncation (then rate_limit_per_s is in rows or tokens per second).")
    auth_failures_per_s: float = Field(1.0, gt=0, description="Failed authentications per second one client "
                                                              "address may make (with keys); beyond it 429.")
    auth_failures_burst: int = Field(10, ge=1, description="Token-bucket size of the failed-authentication limit.")
    keys_reload_s: float = Field(2.0, gt=0, le=60, description="How often the API keys file is checked for "
                                                               "changes (it is also re-read on SIGHUP).")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (bytes) except adapter "
                                                                "uploads; beyond it 413.")
    max_upload_bytes: int = Field(64 << 20, ge=1024, le=256 << 20,
                                  description="Largest adapter upload (bytes); beyond it 413 before the rest of "
                                              "the body is read.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="Deadline for reading a request body (not "
                                                                   "uploads); past it 408.")
    upload_timeout_s: float = Field(300.0, gt=0, le=86400, description="Deadline for receiving an adapter upload; "
                                                                       "past it 408.")
    max_connections: int | None = Field(
        1024, ge=1, description="Concurrent connections (and requests) beyond which new ones get 503 at once. "
                                "Header-read timeouts are the fronting proxy's job (e.g. nginx client_header_timeout).")
    drain_timeout_s: float = Field(30.0, ge=0, le=3600,
                                   description="On SIGTERM: /readyz turns 503 and new requests get 503 at once, "
                                               "accepted ones finish for at most this long before the server "
                                               "exits.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve /metrics, unauthenticated, on this port (for Prometheus on a "
                                          "private network); with API keys the API port's /metrics needs a metrics "
                                          "or admin key.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the metrics_port listener.")
    metrics_max_tasks: int = Field(100, ge=1, description="Distinct `task` label values in metrics; rest 'other'.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines (the server's and uvicorn's): text, or json (one object a line: ts, level, "
                            "logger, message, request_id, and task, version, status, duration_s where known).")
    otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector (OTLP/HTTP) base URL, e.g. http://127.0.0.1:4318: traces of "
                          "requests, admission, queue wait and batch forwards go to <url>/v1/traces (needs the otel "
                          "extra). Unset: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no tracing.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.otlp_endpoint is None:
            self.otlp_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint must be an http:// or https:// URL, got {self.otlp_endpoint!r}")
        cores = os.cpu_count() or 1
        if self.tokenizer_workers > 4 * cores:
            raise ValueError(f"tokenizer_workers ({self.tokenizer_workers}) is more than 4x this machine's {cores} CPU "
                             "cores: extra workers only add memory and context switches; use about the cores the "
                             "server may take")
        if self.max_inputs_per_request is None:
            self.max_inputs_per_request = self.max_batch_rows
        if self.max_inputs_per_request > self.max_batch_rows:
            raise ValueError(f"max_inputs_per_request ({self.max_inputs_per_request}) must be <= max_batch_rows "
                             f"({self.max_batch_rows}): a request never spans two batches")
        if self.api_keys_file is None and not self.insecure_no_auth and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is not a loopback address and no API keys are configured: every "
                             "route would be open to the network. Create keys with `adamix keys new NAME --admin "
                             "--file keys.json` and pass --api-keys keys.json (ADAMIX_API_KEYS_FILE), or set "
                             "ADAMIX_INSECURE_NO_AUTH=1 to serve unauthenticated on purpose")
        return self


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8, ::1 (a name other than localhost counts as non-loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
