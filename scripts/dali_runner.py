"""Run a serialized DALI pipeline (`model.dali`) one call at a time, outside Triton's DALI backend.

Used by the benchmark's in-process baseline, the tests, and the local flavor's preprocessing model.
It imports only DALI: the build copies it beside that model's `model.py`, which Triton's python
backend runs outside this project.
"""

from __future__ import annotations


def synchronous_pipeline(serialized: bytes, batch_size: int | None = None, device_id: int | None = None,
                         num_threads: int | None = None):
    """A built pipeline from `model.dali` bytes. Batch size and threads are the serialized ones unless
    given; a CPU pipeline needs no device (`device_id=None`).

    Synchronous execution (no prefetching): a batch smaller than the batch size must not make DALI
    peek at a batch that was never fed.
    """
    from nvidia.dali import Pipeline

    options = {key: value for key, value in (("batch_size", batch_size), ("num_threads", num_threads)) if value}
    pipeline = Pipeline.deserialize(serialized_pipeline=serialized, device_id=device_id, exec_pipelined=False,
                                    exec_async=False, prefetch_queue_depth=1, **options)
    pipeline.build()
    return pipeline


# What the DALI backend does to load a dali.py (dali_backend, src/model_provider/model_provider.h): import
# the file as a module, then serialize its one @autoserialize pipeline. argv: dali.py, the target file.
_AUTOSERIALIZE = """
import importlib.util, sys
try:
    from nvidia.dali._utils.autoserialize import invoke_autoserialize
except ImportError:
    sys.exit(3)
spec = importlib.util.spec_from_file_location("autoserialize_mod", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["autoserialize_mod"] = module
spec.loader.exec_module(module)
invoke_autoserialize(module, sys.argv[2])
"""
_NO_DALI = 3


def autoserialize(script, timeout: float = 120.0) -> bytes | None:
    """The pipeline a `dali.py` gives when the DALI backend loads it, serialized by this environment's
    DALI in a process of its own (the file may change the import path); None when there is no DALI here.
    RuntimeError with the last line of the error when it cannot be serialized."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "model.dali")
        try:
            done = subprocess.run([sys.executable, "-c", _AUTOSERIALIZE, str(script), target], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"did not finish in {timeout:g} s") from None
        if done.returncode == _NO_DALI:
            return None
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["no message"])[-1])
        with open(target, "rb") as serialized:
            return serialized.read()
