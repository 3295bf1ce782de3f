"""Closing the loop: what the service served, how accurate it turned out, and what to do about it.

`served_log` (tables shared with the service; imports only SQLAlchemy) and the pure `accuracy` and
`drift` modules carry no Dagster code; `assets`, `checks` and `sensors` wire them into the pipeline.
"""
