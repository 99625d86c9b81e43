"""One module per pipeline stage: pure functions plus one thin Prefect task."""
