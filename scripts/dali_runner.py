"""Run a serialized DALI pipeline (`model.dali`) one call at a time, outside Triton's DALI backend.

Used by the benchmark's in-process baseline, the tests, and the local flavor's preprocessing model.
It imports only DALI: the build copies it beside that model's `model.py`, which Triton's python
backend runs outside this project.
"""

from __future__ import annotations


def synchronous_pipeline(serialized: bytes, batch_size: int | None = None, device_id: int | None = None):
    """A built pipeline from `model.dali` bytes. Batch size and threads are the serialized ones unless
    `batch_size` is given; a CPU pipeline needs no device (`device_id=None`).

    Synchronous execution (no prefetching): a batch smaller than the batch size must not make DALI
    peek at a batch that was never fed.
    """
    from nvidia.dali import Pipeline

    options = {"batch_size": batch_size} if batch_size else {}
    pipeline = Pipeline.deserialize(serialized_pipeline=serialized, device_id=device_id, exec_pipelined=False,
                                    exec_async=False, prefetch_queue_depth=1, **options)
    pipeline.build()
    return pipeline
