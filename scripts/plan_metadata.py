"""The metadata file beside a TensorRT plan (`model.plan.json`).

The engine build writes it (and reads it back to decide whether to rebuild); the validator reads it
to check the plan against its config without a GPU. The two keys the validator needs (the profile,
each input's dims) are written by `describe` and read by `profile` and `inputs`, here only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

SUFFIX = ".json"  # model.plan -> model.plan.json
PROFILE, INPUTS = "profile", "inputs"


@dataclasses.dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile over the batch dimension."""

    min: int
    opt: int
    max: int


def path_of(plan: Path) -> Path:
    return plan.with_name(plan.name + SUFFIX)


def describe(profile: Profile, inputs: dict[str, tuple[int, ...]]) -> dict:
    """The validator's part of the metadata: the profile and each input's dims (batch excluded)."""
    return {PROFILE: dataclasses.asdict(profile), INPUTS: {name: list(dims) for name, dims in inputs.items()}}


def load(plan: Path) -> dict:
    """The metadata beside `plan`; OSError when it cannot be read, ValueError when it is not a JSON object."""
    metadata = json.loads(path_of(plan).read_text())
    if not isinstance(metadata, dict):
        raise ValueError(f"expected a JSON object, found {type(metadata).__name__}")
    return metadata


def read(plan: Path) -> dict | None:
    """The metadata beside `plan`, or None when it is missing or unreadable (the plan is then rebuilt)."""
    try:
        return load(plan)
    except (OSError, ValueError):
        return None


def write(plan: Path, metadata: dict) -> Path:
    path = path_of(plan)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(metadata, indent=2))
    staging.replace(path)
    return path


def profile(metadata: dict) -> Profile:
    """The recorded profile; ValueError when the file does not hold one."""
    try:
        return Profile(**{key: int(metadata[PROFILE][key]) for key in ("min", "opt", "max")})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"no readable optimization profile ({type(exc).__name__}: {exc})") from None


def inputs(metadata: dict) -> dict[str, list[int]]:
    """Each input's dims as built (batch excluded); ValueError when malformed."""
    recorded = metadata.get(INPUTS, {})
    if not isinstance(recorded, dict) or not all(isinstance(dims, list) for dims in recorded.values()):
        raise ValueError(f"{INPUTS} must map each input name to its dims")
    return recorded
