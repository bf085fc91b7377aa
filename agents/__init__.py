"""Faust agents, one module per topic family: consume, batch, hand off.

Importing this package registers every agent on `streams.app.app`.
"""

from agents import inference, sessions, synthesis

__all__ = ["inference", "sessions", "synthesis"]
