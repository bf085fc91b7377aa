"""Thin sinks that execute what the reducers and projections decided."""
