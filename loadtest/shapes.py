"""Load shapes, selected with --load-shape, sized by Locust's own --users, --spawn-rate and --run-time.

steady  ramp to --users at --spawn-rate and hold
step    add --step-users every --step-seconds until --users, then hold
spike   hold --users // 4, jump to --users for --spike-seconds in the middle of the run, drop back
"""

from __future__ import annotations

# No Locust import here: importing locust monkey-patches the whole process for gevent.
SHAPES = ("steady", "step", "spike")


def users_at(shape: str, elapsed: float, users: int, run_time: float, step_users: int, step_seconds: float,
             spike_seconds: float) -> int | None:
    """How many users the shape wants `elapsed` seconds in; None once the run is over."""
    if run_time and elapsed >= run_time:
        return None
    if shape == "steady":
        return users
    if shape == "step":
        return min(users, step_users * (1 + int(elapsed // step_seconds)))
    if shape == "spike":
        base = max(1, users // 4)
        start = (run_time - spike_seconds) / 2 if run_time else 0.0
        return users if start <= elapsed < start + spike_seconds else base
    raise ValueError(f"unknown load shape {shape!r}; expected one of {SHAPES}")
