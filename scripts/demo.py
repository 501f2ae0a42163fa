"""The built-in demo model: a small CNN trained offline on shape images the project renders.

Takes the classifier's labels (each must name a shape this module can draw) and the preprocessing
spec; returns a trained `torch.nn.Module` whose forward gives class probabilities, and writes a
held-out set of real JPEG files (`<dir>/<label>/<n>.jpg`) for end-to-end accuracy tests.
Everything is seeded: the same inputs give the same images and the same weights.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from scripts.config import PreprocessSpec
from scripts.preprocess import reference

Polygon = list[tuple[float, float]]
TRAIN_PER_CLASS = 300
HELDOUT_PER_CLASS = 50
MIN_DEMO_ACCURACY = 0.95  # top-1 on the held-out set, through any flavor's served ensemble
TRAIN_SEED = 1
HELDOUT_SEED = 2
CAMERA_FRAME = (640, 480)  # what the benchmarks and the tuner send: the size of a typical camera frame


def _regular(n: int, radius: float, rotation: float) -> Polygon:
    angles = [rotation + 2 * math.pi * k / n for k in range(n)]
    return [(radius * math.cos(angle), radius * math.sin(angle)) for angle in angles]


def _star(radius: float, rotation: float) -> Polygon:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.42
        angle = rotation + math.pi * k / 5
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return points


def _cross(radius: float, rotation: float) -> Polygon:
    arm = radius * 0.33
    outline = [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
               (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)]
    cos, sin = math.cos(rotation), math.sin(rotation)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in outline]


# Each shape draws itself centered at (cx, cy) with the given radius, rotation, and colors.
SHAPES: dict[str, Callable] = {
    "circle": lambda draw, cx, cy, r, rot, fg, bg: draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg),
    "ring": lambda draw, cx, cy, r, rot, fg, bg: (
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg),
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=bg),
    ),
    "square": lambda draw, cx, cy, r, rot, fg, bg: draw.polygon(
        [(cx + x, cy + y) for x, y in _regular(4, r, rot)], fill=fg),
    "triangle": lambda draw, cx, cy, r, rot, fg, bg: draw.polygon(
        [(cx + x, cy + y) for x, y in _regular(3, r, rot)], fill=fg),
    "star": lambda draw, cx, cy, r, rot, fg, bg: draw.polygon(
        [(cx + x, cy + y) for x, y in _star(r, rot)], fill=fg),
    "cross": lambda draw, cx, cy, r, rot, fg, bg: draw.polygon(
        [(cx + x, cy + y) for x, y in _cross(r, rot)], fill=fg),
}


def check_labels(labels: tuple[str, ...]) -> None:
    unknown = [label for label in labels if label not in SHAPES]
    if unknown:
        raise ValueError(
            f"the demo model can only learn the shapes {sorted(SHAPES)}; the label file names {unknown}. "
            "For other labels, bring your own model: make adopt MODEL=... LABELS=... (README \"Bring your own model\")."
        )


def render(label: str, rng: np.random.Generator) -> bytes:
    """One JPEG of `label` at a random size, position, rotation, color and quality."""
    from PIL import Image, ImageDraw, ImageFilter

    width = int(rng.integers(96, 400))
    height = int(np.clip(width * rng.uniform(0.7, 1.4), 80, 480))
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    while sum(abs(a - b) for a, b in zip(fg, bg, strict=True)) < 180:
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (width, height), bg)
    # Keep the shape inside the center crop: the shorter side decides what survives preprocessing.
    short = min(width, height)
    radius = short * rng.uniform(0.22, 0.4)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * short
    cy = height / 2 + rng.uniform(-0.08, 0.08) * short
    SHAPES[label](ImageDraw.Draw(image), cx, cy, radius, rng.uniform(0, 2 * math.pi), fg, bg)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(0, 12)
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(60, 96)))
    return buffer.getvalue()


def camera_frames(count: int) -> list[bytes]:
    """Demo shapes re-rendered as 640x480 JPEGs (the size of a typical camera frame)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    images = []
    for index in range(count):
        label = sorted(SHAPES)[index % len(SHAPES)]
        with Image.open(io.BytesIO(render(label, rng))) as small:
            buffer = io.BytesIO()
            small.convert("RGB").resize(CAMERA_FRAME).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def samples(labels: tuple[str, ...], per_class: int, seed: int) -> Iterator[tuple[int, bytes]]:
    check_labels(labels)
    rng = np.random.default_rng(seed)
    for _ in range(per_class):
        for index, label in enumerate(labels):
            yield index, render(label, rng)


def write_heldout(labels: tuple[str, ...], directory: Path, per_class: int = HELDOUT_PER_CLASS) -> int:
    """Render the held-out JPEGs (a seed the training set never uses) into `directory/<label>/`."""
    count = 0
    for n, (index, jpeg) in enumerate(samples(labels, per_class, HELDOUT_SEED)):
        path = directory / labels[index] / f"{n // len(labels):03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg)
        count += 1
    return count


def heldout_samples(count: int) -> list[tuple[int, bytes]]:
    """The first `count` held-out JPEGs (of the shapes in their order), rendered in memory: real images
    for checks that do not depend on the labels."""
    shapes = tuple(SHAPES)
    return list(samples(shapes, -(-count // len(shapes)), HELDOUT_SEED))[:count]


def heldout_images(directory: Path) -> list[tuple[str, Path]]:
    """(label, path) for every held-out JPEG under `directory`."""
    return [(path.parent.name, path) for path in sorted(directory.glob("*/*.jpg"))]


def make_model(num_classes: int):
    import torch
    from torch import nn

    class ShapeNet(nn.Module):
        """Four conv blocks and a linear head; forward returns softmax probabilities."""

        def __init__(self):
            super().__init__()

            def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
                return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

            self.features = nn.Sequential(
                # Per-image normalization: shapes, not colors, decide the class.
                nn.InstanceNorm2d(3),
                *block(3, 32, stride=2),
                *block(32, 32), nn.MaxPool2d(2),
                *block(32, 64), nn.MaxPool2d(2),
                *block(64, 96), nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(4),
                nn.Flatten(),
            )
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(96 * 16, num_classes))

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(x), dim=1)

    return ShapeNet()


def train(labels: tuple[str, ...], spec: PreprocessSpec, progress: Callable[[str], None] = print,
          epochs: int = 6, per_class: int = TRAIN_PER_CLASS):
    """Train the demo CNN on rendered images, preprocessed exactly as the server will; returns it in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    progress(f"rendering {per_class * len(labels)} training images")
    targets, tensors = [], []
    for index, jpeg in samples(labels, per_class, TRAIN_SEED):
        targets.append(index)
        tensors.append(reference(jpeg, spec))
    x = torch.from_numpy(np.stack(tensors))
    y = torch.tensor(targets)
    model = make_model(len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        correct, total_loss = 0, 0.0
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            logits = model.logits(x[batch])
            loss = loss_fn(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == y[batch]).sum().item()
        progress(f"epoch {epoch + 1}/{epochs}: loss {total_loss / len(x):.3f}, train accuracy {correct / len(x):.3f}")
    return model.eval()
