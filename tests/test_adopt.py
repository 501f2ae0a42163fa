"""Bring your own model: `adopt` fits the committed configs to a model and its labels (comments kept),
the build takes it, and the real local server answers with its labels. Every intake error is asserted
on its message."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from tritonclient.grpc import model_config_pb2

from client import ImageClassifierClient
from scripts import adopt, corpus, demo, export, intake
from scripts.__main__ import main
from scripts.build import VERIFY_MIN_IMAGES, Builder, model_choice
from scripts.config import load_bundle, read_config
from scripts.config_text import InPlaceError, edit_in_place
from scripts.constants import CONFIG_FILENAME
from scripts.layout import Layout
from scripts.preprocess import reference
from scripts.serve import local_server
from tests.conftest import REPOSITORY

# A torchvision-like ResNet (BasicBlock, stages 2-2-2-2: ResNet-18's shape), as a user's training code
# would define it: the pickled model refers to it by module and class name, so the build needs the file.
RESNET_SOURCE = '''
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes=1000, widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for index, width in enumerate(widths):
            blocks += [BasicBlock(cin, width, 1 if index == 0 else 2), BasicBlock(width, width)]
            cin = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))
'''


def small_cnn(num_classes: int, channels: int = 3) -> nn.Module:
    """Random weights, scaled so that images get clearly different top labels (as a trained model's would)."""
    torch.manual_seed(num_classes)
    model = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(DECISIVE)
    return model


DECISIVE = 30.0


class FixedBatch(nn.Module):
    """Flattens to a batch of one: runs on one image, not on a batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=8)

    def forward(self, x):
        return self.conv(x).reshape(1, -1)


def import_code(folder, module_name: str):
    """Import a user's code file the way their training script would (then forget it: the build must find it)."""
    spec = importlib.util.spec_from_file_location(module_name, folder / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def write_labels(path, count: int, prefix: str):
    path.write_text("".join(f"{prefix}_{i:04d}\n" for i in range(count)))
    return path


@pytest.fixture
def project(tmp_path):
    """A copy of the committed repository to adopt into, with its own build folder."""
    shutil.copytree(REPOSITORY, tmp_path / "model_repository")
    return Layout(tmp_path / "model_repository", tmp_path / "build")


def tree_digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_adopt(layout, *args):
    return main(["adopt", *map(str, args), "--repository", str(layout.repository), "--build-dir", str(layout.build_dir)])


# -- adopting, building and serving real models --------------------------------------------------
def serve_and_classify(layout, module, images: list[bytes]) -> list:
    """Build the adopted model, serve it, and classify `images`; with what torch says for each."""
    choice = model_choice(layout)
    results = {r.name: r for r in Builder(layout, model=choice.model, code=choice.code, progress=lambda m: None).run()}
    report = results["onnx"].report
    assert report["samples"] >= VERIFY_MIN_IMAGES, "parity runs on real images of many kinds, whatever the labels"
    bundle = load_bundle(layout.repository)
    with torch.no_grad():
        expected = module(torch.from_numpy(np.stack([reference(i, bundle.preprocess) for i in images]))).numpy()
    with local_server(layout, log_path=layout.build_dir / "server.log") as server:
        with ImageClassifierClient(server.grpc_url, model=bundle.ensemble.name) as client:
            served = client.classify(images, top_k=3)
    return bundle, expected, served, report


# The server decodes and resizes with DALI, the reference with PIL: scores differ by a little, relative
# to the spread of an image's scores.
SCORE_TOLERANCE = 0.02


def assert_labels_served(bundle, expected, served, labels_file):
    """Each label is the adopted file's at its index, with the score the model gives that class, and the
    top one is the model's best (within the decoders' difference)."""
    labels = labels_file.read_text().split()
    assert bundle.classifier.labels == tuple(labels)
    worst = 0.0
    for scores, result in zip(expected, served, strict=True):
        tolerance = SCORE_TOLERANCE * float(scores.max() - scores.min())
        for prediction in result.raise_for_error().predictions:
            assert prediction.label == labels[prediction.index]
            assert abs(scores[prediction.index] - prediction.score) <= tolerance, (result.source, prediction)
            worst = max(worst, abs(scores[prediction.index] - prediction.score) / tolerance * SCORE_TOLERANCE)
        assert scores[result.top.index] >= scores.max() - tolerance, (result.source, result.top, int(scores.argmax()))
    print(f"largest served-vs-torch score difference: {worst:.4f} of the score spread")


def test_adopt_onnx_reads_its_size_and_renames_its_tensors(project, tmp_path, capsys):
    module = small_cnn(7)
    onnx_file = tmp_path / "user.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 80, 112),), str(onnx_file), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    labels = write_labels(tmp_path / "labels.txt", 7, "onnx")
    before = tree_digest(project.repository)
    assert run_adopt(project, onnx_file, "--labels", labels) == 0
    shown = capsys.readouterr().out
    assert "+    dims: [ 3, 80, 112 ]" in shown and "input=80x112" in shown
    assert tree_digest(project.repository) == before, "without --yes nothing is written"
    assert run_adopt(project, onnx_file, "--labels", labels, "--yes") == 0
    capsys.readouterr()
    bundle = load_bundle(project.repository)
    assert bundle.preprocess.crop == (80, 112) and bundle.preprocess.resize_shorter == round(112 * 256 / 224)
    assert run_adopt(project, onnx_file, "--labels", labels) == 0
    assert "the configs already fit this model" in capsys.readouterr().out
    images = [jpeg for _, jpeg in demo.heldout_samples(12)]
    bundle, expected, served, report = serve_and_classify(project, module, images)
    assert report["kind"] == "onnx" and report["max_abs_error"] is None
    assert_labels_served(bundle, expected, served, labels)


def test_adopt_torchscript_with_its_own_normalization(project, tmp_path, capsys):
    module = small_cnn(12)
    scripted = tmp_path / "user.pt"
    torch.jit.script(module).save(str(scripted))
    labels = write_labels(tmp_path / "labels.txt", 12, "scripted")
    assert run_adopt(project, scripted, "--labels", labels, "--input-size", "128", "--resize-shorter", "144",
                     "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--yes") == 0
    bundle = load_bundle(project.repository)
    assert (bundle.preprocess.crop, bundle.preprocess.resize_shorter) == ((128, 128), 144)
    assert bundle.preprocess.mean == (0.5, 0.5, 0.5) and bundle.preprocess.std == (0.25, 0.25, 0.25)
    images = [sample.data for sample in corpus.good([jpeg for _, jpeg in demo.heldout_samples(2)])]
    bundle, expected, served, report = serve_and_classify(project, module, images)
    assert report["kind"] == "torchscript" and report["max_abs_error"] <= report["tolerance"]
    assert_labels_served(bundle, expected, served, labels)


def test_adopt_pickled_imagenet_style_resnet_with_its_code(project, tmp_path, capsys):
    """The README's example: a ResNet-18-shaped ImageNet classifier (224 crop, 256 resize, 1000 labels)."""
    code = tmp_path / "training_code"
    code.mkdir()
    (code / "imagenet_resnet.py").write_text(RESNET_SOURCE)
    torch.manual_seed(0)
    model = import_code(code, "imagenet_resnet").ResNet(1000).eval()
    with torch.no_grad():
        model.fc.weight.mul_(DECISIVE)
    model_file = tmp_path / "model.pth"
    torch.save(model, model_file)
    del sys.modules["imagenet_resnet"]  # as in a fresh process: only --code can bring the class back
    labels = write_labels(tmp_path / "imagenet_labels.txt", 1000, "synset")

    assert run_adopt(project, model_file, "--labels", labels, "--input-size", "224") == 1
    assert "imagenet_resnet.ResNet cannot be imported" in capsys.readouterr().err
    assert run_adopt(project, model_file, "--labels", labels, "--input-size", "224", "--code", code, "--yes") == 0
    assert "adopt: model=model.pth kind=pickle input=224x224 resize_shorter=256 labels=1000" in capsys.readouterr().out
    del sys.modules["imagenet_resnet"]
    images = [jpeg for _, jpeg in demo.heldout_samples(8)]
    bundle, expected, served, report = serve_and_classify(project, model, images)
    assert report["kind"] == "pickle" and report["max_abs_error"] <= report["tolerance"]
    assert_labels_served(bundle, expected, served, labels)


# -- the edit keeps ops' files as they are written -------------------------------------------------
def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "#" in line]


def test_adopt_diff_keeps_every_comment_line(project, tmp_path):
    module = small_cnn(10)
    scripted = tmp_path / "m.pt"
    torch.jit.script(module).save(str(scripted))
    plan = adopt.plan(project, scripted, write_labels(tmp_path / "l.txt", 10, "x"), (96, 128), 150, [0.4, 0.4, 0.4],
                      [0.2, 0.2, 0.2])
    configs = [path for path in plan.changes if path.name == CONFIG_FILENAME]
    assert len(configs) == 3
    for path in configs:
        before, after = plan.changes[path]
        assert comment_lines(before) == comment_lines(after), path
        assert len(before.splitlines()) == len(after.splitlines()), "values change, lines stay"
    diff = plan.diff(project.repository.parent)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed and not any("#" in line for line in changed)


def test_committed_configs_round_trip_unchanged():
    for path in sorted(REPOSITORY.glob("*/config.pbtxt")):
        text = path.read_text()
        assert edit_in_place(text, read_config(path)) == text


def test_in_place_edits_every_value_kind_and_refuses_what_has_no_place():
    text = textwrap.dedent("""\
        name: "m"  # trailing comment
        max_batch_size: 8
        input { name: "a" data_type: TYPE_FP32 dims: 3 dims: 4 }
        parameters { key: "k" value { string_value: "v \\"q\\"" } }
        """)
    want = read_config_text(text)
    want.max_batch_size = 16
    want.input[0].data_type = model_config_pb2.TYPE_UINT8
    want.input[0].dims[:] = [5, 6]
    want.parameters["k"].string_value = 'w "r"'
    edited = edit_in_place(text, want)
    assert read_config_text(edited) == want
    assert "# trailing comment" in edited and "dims: 5 dims: 6" in edited
    want.input[0].dims[:] = [1, 2, 3]
    with pytest.raises(InPlaceError, match="write it as one list"):
        edit_in_place(text, want)
    want = read_config_text(text)
    want.dynamic_batching.max_queue_delay_microseconds = 5
    with pytest.raises(InPlaceError, match="dynamic_batching"):
        edit_in_place(text, want)


def read_config_text(text: str):
    from google.protobuf import text_format

    from scripts.config import ModelConfig

    return text_format.Parse(text, ModelConfig())


# -- what adopt refuses, and how it says so ---------------------------------------------------------
def test_labels_must_match_the_model_output(project, tmp_path):
    scripted = tmp_path / "m.pt"
    torch.jit.script(small_cnn(10)).save(str(scripted))
    with pytest.raises(adopt.AdoptError, match=r"returns 10 scores per image, but .*l.txt has 9 labels"):
        adopt.plan(project, scripted, write_labels(tmp_path / "l.txt", 9, "x"), (64, 64))
    with pytest.raises(adopt.AdoptError, match=r"labels.txt has 6 labels: pass --labels FILE, one label per line, 10 lines"):
        adopt.plan(project, scripted, None, (64, 64))


def test_input_must_be_a_batch_of_rgb_images(project, tmp_path):
    gray = tmp_path / "gray.onnx"
    torch.onnx.export(small_cnn(6, channels=1), (torch.zeros(1, 1, 64, 64),), str(gray), dynamo=False,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    with pytest.raises(adopt.AdoptError, match=r"has shape \['n', 1, 64, 64\]; it must be \[N, 3, H, W\]"):
        adopt.plan(project, gray)
    torch.jit.script(small_cnn(6, channels=1)).save(str(tmp_path / "gray.pt"))
    with pytest.raises(adopt.AdoptError, match="first convolution takes 1 channels"):
        adopt.plan(project, tmp_path / "gray.pt", size=(64, 64))
    with pytest.raises(adopt.AdoptError, match="does not record the image size .* pass --input-size"):
        adopt.plan(project, tmp_path / "gray.pt")


def test_a_fixed_batch_is_refused_with_the_fix(project, tmp_path):
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(small_cnn(6), (torch.zeros(1, 3, 64, 64),), str(fixed), dynamo=False, input_names=["input"])
    with pytest.raises(adopt.AdoptError, match=r"fixed batch dimension 1 .*dynamic_axes=\{\"input\": \{0: \"batch\"\}"):
        adopt.plan(project, fixed)
    torch.save(FixedBatch(), tmp_path / "fixed.pth")
    with pytest.raises(adopt.AdoptError, match=r"not on a batch of 2: its batch dimension is fixed to 1.*flatten\(1\)"):
        adopt.plan(project, tmp_path / "fixed.pth", size=(64, 64))


# -- intake errors: what the file is, and what to do ------------------------------------------------
def test_a_pickled_module_without_its_code_names_module_class_and_fix(tmp_path):
    code = tmp_path / "src"
    code.mkdir()
    (code / "adopt_netdefs.py").write_text("from torch import nn\n\nclass Net(nn.Sequential):\n    pass\n")
    net = import_code(code, "adopt_netdefs").Net(nn.Conv2d(3, 2, 1))
    torch.save(net, tmp_path / "model.pth")
    del sys.modules["adopt_netdefs"]
    with pytest.raises(intake.IntakeError) as refused:
        intake.load(tmp_path / "model.pth")
    message = str(refused.value)
    assert "class adopt_netdefs.Net cannot be imported (No module named 'adopt_netdefs')" in message
    assert "pass the folder that holds adopt_netdefs.py" in message and "--code DIR" in message
    assert 'torch.jit.script(model).save("model.pt")' in message
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(intake.IntakeError, match=f"searched: {empty}"):
        intake.load(tmp_path / "model.pth", (empty,))
    assert intake.load(tmp_path / "model.pth", (code,)).kind == "pickle"


def test_a_class_defined_in_the_training_script_is_found_in_code(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        class ScriptNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return self.conv(x).mean((2, 3))

        if __name__ == "__main__":
            torch.save(ScriptNet(), "model.pth")
        """))
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    with pytest.raises(intake.IntakeError, match=r"class ScriptNet was defined in the script that saved the model "
                                                 r"\(module __main__\): pass the folder of a .py file that defines"):
        intake.load(tmp_path / "model.pth")
    loaded = intake.load(tmp_path / "model.pth", (tmp_path,))
    assert type(loaded.module).__name__ == "ScriptNet"
    assert loaded.module(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_a_state_dict_shows_the_two_lines_that_make_a_module(tmp_path):
    torch.save(small_cnn(6).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(intake.IntakeError) as refused:
        intake.load(tmp_path / "weights.pth")
    assert "holds a state_dict (6 tensors: 0.weight, 0.bias, 2.weight, ...)" in str(refused.value)
    assert 'model = YourModel(); model.load_state_dict(torch.load("weights.pth")); model.eval()' in str(refused.value)
    assert 'torch.jit.script(model).save("model.pt")' in str(refused.value)
    torch.save({"epoch": 9, "model_state_dict": small_cnn(6).state_dict()}, tmp_path / "checkpoint.pth")
    with pytest.raises(intake.IntakeError, match=r"training checkpoint whose 'model_state_dict' is a state_dict"
                                                 r"[\s\S]*torch.load\(\"checkpoint.pth\"\)\['model_state_dict'\]"):
        intake.load(tmp_path / "checkpoint.pth")


def safetensors_file(names: list[str]) -> bytes:
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, name in enumerate(names)}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(4 * len(names))


def zip_of(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "x")
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "said"), [
    (b"", "it looks like an empty file"),
    (b"tench\ngoldfish\n", "it looks like a text file (first line: 'tench')"),
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "an HDF5 file (Keras .h5 weights?): convert the model to ONNX (tf2onnx) first"),
    (zip_of("saved/variables.index", "saved/saved_model.pb"), "a zip archive of 2 files (saved/variables.index, saved/"),
    (b"\x00\x01\x02\x03" * 16, "64 bytes of unknown binary data (first bytes: 00 01 02 03 00 01 02 03)"),
    (safetensors_file(["fc.weight", "fc.bias"]), "holds safetensors weights (2 tensors: fc.weight, fc.bias, ...)"),
])
def test_a_file_of_no_accepted_format_says_what_it_looks_like(tmp_path, content, said):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(intake.IntakeError) as refused:
        intake.load(path)
    assert said in str(refused.value)


def test_an_onnx_file_is_known_by_its_content(tmp_path, bundle):
    path = tmp_path / "model.bin"
    export.export(small_cnn(len(bundle.classifier.labels)), bundle.classifier, path)
    assert intake.load(path).kind == "onnx"


def test_parity_images_are_many_kinds_whatever_the_labels(project):
    write_labels(project.repository / "classifier" / "labels.txt", 6, "not_a_shape")
    images = Builder(project, progress=lambda m: None).verification_images()
    kinds = {sample.kind for sample in images}
    assert len(images) >= VERIFY_MIN_IMAGES
    assert {"rendered-jpeg", "warmup", "jpeg-grayscale", "jpeg-cmyk", "png-alpha", "jpeg-very-large", "png-tiny"} <= kinds
