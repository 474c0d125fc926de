"""Thin route modules: parse, call `ServerState`, shape the response."""
