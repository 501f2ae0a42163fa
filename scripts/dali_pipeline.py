"""THE preprocessing, as a DALI graph: the one definition every flavor runs.

decode (RGB) -> resize the shorter side to `resize_shorter` -> center crop -> normalize -> CHW float.

It imports only DALI: besides the build's own use (`scripts.preprocess`), it is copied beside the
`dali.py` of the cpu and gpu flavors' preprocessing model, which the DALI backend runs in the
server (with the server's DALI) to serialize the pipeline when it loads the model.
"""

from __future__ import annotations


def preprocessing(input_name: str, resize_shorter: int, crop: tuple[int, int], mean: tuple[float, float, float],
                  std: tuple[float, float, float], decoder: str):
    """The graph, inside an active pipeline; returns its output. `decoder`: "cpu", or "mixed" (nvJPEG:
    parsed on the CPU, decoded on the GPU, which moves every later step to the GPU). Mean and std are
    on the 0..1 scale, RGB."""
    from nvidia.dali import fn, types

    encoded = fn.external_source(name=input_name, dtype=types.UINT8, ndim=1)
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    images = fn.resize(images, resize_shorter=resize_shorter)
    return fn.crop_mirror_normalize(
        images,
        crop=crop,
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        dtype=types.FLOAT,
        output_layout="CHW",
    )
