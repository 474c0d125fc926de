"""OpenTelemetry traces, optional (`pip install 'adamix-serve[otel]'`), exported over OTLP/HTTP.

Off unless `otlp_endpoint` (ADAMIX_OTLP_ENDPOINT, else the standard OTEL_EXPORTER_OTLP_ENDPOINT) is set; off,
this module imports nothing of OpenTelemetry (its SDK and exporter are never loaded) and every call here returns
at once. The app's own provider is never the global one, so FastAPI's native telemetry stays off. On, a request
makes:

    adamix.request    (server span; parent: the caller's `traceparent`, if any) method, path, route, status,
                      request id, task, version
      adamix.admission  checking and tokenising its inputs: task, version, rows, tokens
      adamix.queue      waiting for the batch that runs it
    adamix.forward    one per batch (its own trace): the backbone forward over every row of the batch, linked
                      to the request span of each request it serves (each link names the request id, task and
                      version); attributes: rows, requests, the distinct tasks and versions, the request ids

A batch mixes requests from many traces, so its span cannot be the child of all of them: it links to each.
Work no traced request asked for (warm-up, the upload probe) makes no span.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.types import Scope

if TYPE_CHECKING:
    from server.settings import Settings

TRACES_PATH = "/v1/traces"
INSTALL_HINT = "pip install 'adamix-serve[otel]'"


class TracingUnavailableError(RuntimeError):
    """An OTLP endpoint is configured but the OpenTelemetry packages are not installed."""


class _NoSpan:
    """What the span context managers yield while tracing is off: takes attributes, keeps nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        pass


_NO_SPAN = _NoSpan()
_OFF = nullcontext(_NO_SPAN)  # stateless: one instance serves every caller


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base endpoint (as OTEL_EXPORTER_OTLP_ENDPOINT means it)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class Tracing:
    """The server's tracer: `Tracing()` is off; `Tracing(provider)` records to that SDK tracer provider."""

    def __init__(self, provider: Any = None, owned: bool = False) -> None:
        self.enabled = provider is not None
        self._provider = provider
        self._owned = owned  # built here from the settings: shut down (flushed) with the server
        if self.enabled:
            from opentelemetry import context, propagate, trace

            self._trace, self._context, self._propagate = trace, context, propagate
            self._tracer = provider.get_tracer("adamix-serve")

    @classmethod
    def from_settings(cls, settings: Settings, provider: Any = None, service_version: str = "") -> Tracing:
        """Tracing to `provider` when given (tests: an in-memory exporter), else to the settings' OTLP endpoint."""
        if provider is not None:
            return cls(provider)
        if settings.otlp_endpoint is None:
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingUnavailableError(
                f"otlp_endpoint is set ({settings.otlp_endpoint}, from ADAMIX_OTLP_ENDPOINT or "
                f"OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry packages are not installed ({exc.name} is "
                f"missing): {INSTALL_HINT}, or unset the endpoint to serve without traces") from None
        resource = Resource.create({"service.name": "adamix-serve", "service.version": service_version})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(otlp_traces_url(settings.otlp_endpoint))))
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        """Export what is still buffered (a provider built from the settings only; a given one is the caller's)."""
        if self._owned:
            self._provider.shutdown()

    # ------------------------------------------------------------------ spans

    @contextmanager
    def request_span(self, scope: Scope, ctx: Any) -> Iterator[Any]:
        """The span of one HTTP request (`ctx`: its `server.request_context.RequestContext`), current while the app
        runs; the caller's trace continues if it sent a `traceparent`."""
        parent = self._propagate.extract(Headers(scope=scope))
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"],
                      "adamix.request_id": ctx.request_id}
        with self._tracer.start_as_current_span("adamix.request", context=parent, attributes=attributes,
                                                kind=self._trace.SpanKind.SERVER) as span:
            try:
                yield span
            finally:
                route = getattr(scope.get("route"), "path", None)
                found = {"http.route": route, "http.response.status_code": ctx.status, "adamix.task": ctx.task,
                         "adamix.version": ctx.version}
                span.set_attributes({k: v for k, v in found.items() if v is not None})
                if ctx.status is not None and ctx.status >= 500:
                    span.set_status(self._trace.StatusCode.ERROR)

    def child_span(self, name: str, attributes: dict[str, Any]):
        """A context manager: a span under the current request's span, or nothing outside a traced request."""
        if not self.enabled or not self._trace.get_current_span().is_recording():
            return _OFF
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def start_child_span(self, name: str, attributes: dict[str, Any]) -> Any:
        """A span under the current request's span that the caller ends (None outside a traced request)."""
        if not self.enabled or not self._trace.get_current_span().is_recording():
            return None
        return self._tracer.start_span(name, attributes=attributes)

    def current_span_context(self) -> Any:
        """The current request span's context, for a batch span's link to it (None when there is none)."""
        if not self.enabled:
            return None
        span = self._trace.get_current_span()
        return span.get_span_context() if span.is_recording() else None

    def batch_span(self, name: str, links: Sequence[tuple[Any, dict[str, Any]]], attributes: dict[str, Any]):
        """A context manager: a root span for work serving many requests, linked to each one's span context."""
        links = [self._trace.Link(c, a) for c, a in links if c is not None] if self.enabled else []
        if not links:
            return _OFF
        return self._tracer.start_as_current_span(name, context=self._context.Context(), links=links,
                                                  attributes=attributes)
