"""Errors of the simulator."""

from __future__ import annotations


class SimulatorError(ValueError):
    """A request or page the simulator cannot score: an id unknown to the
    world, a candidate that does not match the world's catalogue (usually a
    data file generated with another sim config or seed), or a bad config."""
