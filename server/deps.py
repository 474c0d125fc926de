"""Typed FastAPI dependencies."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.settings import Settings
from server.state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def get_ready_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    state.require_ready()
    return state


def get_settings(request: Request) -> Settings:
    return request.app.state.server.settings


StateDep = Annotated[ServerState, Depends(get_state)]
ReadyStateDep = Annotated[ServerState, Depends(get_ready_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
