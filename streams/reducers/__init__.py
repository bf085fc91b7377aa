"""Pure reducers: events and current state in, new state and counters out."""
