"""Training loops for each method, weight averaging, schedules and resumable state."""
