"""Build the small TorchScript models the block server's tests, demo and benchmark load.

Usage: make_test_models.py OUT_DIR

OUT_DIR becomes a Triton-style model repository (OUT_DIR/<model>/config.pbtxt and
OUT_DIR/<model>/<version>/model.pt, platform "pytorch_libtorch"), so the same
directory can also be served by Triton itself to compare behaviour:

  mlp          two versions with different weights, asks for a GPU instance (the
               server falls back to CPU without one), dynamic batching
  cnn          an image classifier whose input has a plain name ("image", not the
               INPUT__n form), dynamic batching with preferred batch sizes
  two_io       two inputs and two outputs of different element types, batching off
  dtypes       UINT8, BOOL, INT32 and FP16 round trips, no batch dimension
  batch_probe  reports the batch size it was run with and spins for as long as the
               request asks, so tests can observe batching, queueing and overload
  strings      BYTES in and out (TorchScript List[str]), batched
  vdag_*       four small FP32 models that compose into vDAGs: vdag_pre (x -> features),
               vdag_left (features -> left), vdag_right (features -> right) and
               vdag_join (left, right -> y)

OUT_DIR/vdag_expected.json holds an input x and what the graphs the vDAG tests build
from the vdag_* models give for it, composed here in PyTorch from the saved files.

OUT_DIR/expected.json holds a fixed input for every model except batch_probe (whose
outputs depend on how requests were batched) and the outputs the saved model gives
for it, so the Rust tests can check the server end to end against PyTorch. The names,
types and shapes here are a contract those tests rely on.

Everything is seeded and expected outputs are computed on one CPU thread, so
expected.json is byte-identical across runs.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# KServe v2 datatype names; Triton's config names are the same with a TYPE_ prefix.
TORCH_DTYPES = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


# Where Triton's config name differs from the KServe one beyond the TYPE_ prefix.
CONFIG_TYPES = {"BYTES": "STRING"}


@dataclass(frozen=True)
class Io:
    """One input or output tensor as config.pbtxt declares it."""

    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0


@dataclass
class Model:
    name: str
    max_batch_size: int
    inputs: list[Io]
    outputs: list[Io]
    config_tail: list[str]  # config.pbtxt lines after input/output: scheduling, instances
    versions: dict[int, torch.jit.ScriptModule]
    example: tuple[Tensor, ...] | None  # fixed input recorded in expected.json


def script(module: nn.Module) -> torch.jit.ScriptModule:
    # Inference-only models: parameters that don't require grad keep the server
    # from building autograd graphs even if it forgets a no-grad guard.
    return torch.jit.script(module.eval().requires_grad_(False))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(16, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=1)


def mlp() -> Model:
    versions = {}
    for version in (1, 2):
        # The version number is the seed, so the two versions answer differently
        # and tests can tell which one served a request.
        torch.manual_seed(version)
        versions[version] = script(Mlp())
    # One input for both versions, so tests can compare their answers.
    torch.manual_seed(100)
    return Model(
        name="mlp",
        max_batch_size=32,
        inputs=[Io("INPUT__0", "FP32", (16,))],
        outputs=[Io("OUTPUT__0", "FP32", (4,))],
        config_tail=[
            "version_policy: { all { } }",
            "dynamic_batching { max_queue_delay_microseconds: 1000 }",
            # KIND_GPU on a machine without one exercises the server's CPU fallback.
            "instance_group [ { count: 1 kind: KIND_GPU } ]",
            'model_warmup [ { name: "zeros" batch_size: 4 inputs { key: "INPUT__0" '
            "value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]",
        ],
        versions=versions,
        example=(torch.randn(3, 16),),
    )


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 8 * 8, 10)

    # The server binds the "image" input to this argument by its name.
    def forward(self, image: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(image), 1))


def cnn() -> Model:
    torch.manual_seed(3)
    return Model(
        name="cnn",
        max_batch_size=64,
        inputs=[Io("image", "FP32", (3, 32, 32))],
        outputs=[Io("logits", "FP32", (10,))],
        config_tail=[
            "dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [ 16, 32 ] }",
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
            # libtorch's first runs of a graph are slow: the server runs these
            # before the model is ready.
            "model_warmup [ {",
            '  name: "random images" batch_size: 16 count: 2',
            '  inputs { key: "image" value: { data_type: TYPE_FP32 dims: [ 3, 32, 32 ] random_data: true } }',
            "} ]",
        ],
        versions={1: script(Cnn())},
        example=(torch.rand(3, 3, 32, 32),),
    )


class TwoIo(nn.Module):
    def forward(self, ints: Tensor, floats: Tensor) -> tuple[Tensor, Tensor]:
        return ints.float() * floats + 0.5, ints.sum(dim=1, keepdim=True)


def two_io() -> Model:
    torch.manual_seed(4)
    return Model(
        name="two_io",
        max_batch_size=8,
        inputs=[Io("INPUT__0", "INT64", (4,)), Io("INPUT__1", "FP32", (4,))],
        outputs=[Io("OUTPUT__0", "FP32", (4,)), Io("OUTPUT__1", "INT64", (1,))],
        # No dynamic_batching: Triton's default scheduler, each request runs alone.
        config_tail=["instance_group [ { count: 2 kind: KIND_CPU } ]"],
        versions={1: script(TwoIo())},
        example=(torch.randint(-100, 100, (3, 4)), torch.randn(3, 4)),
    )


class Dtypes(nn.Module):
    def forward(
        self, u8: Tensor, flag: Tensor, i32: Tensor, half: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return u8 + 1, torch.logical_not(flag), i32 * 2, half * 2


def dtypes() -> Model:
    # Hand-picked rather than random, to cover the edges: 255 wraps to 0, negative
    # and large int32 values (still doubling without overflow), signed zero, halves
    # that are not exact decimals, and the smallest subnormal half.
    example = (
        torch.tensor([0, 1, 2, 100, 127, 128, 254, 255], dtype=torch.uint8),
        torch.tensor([True, False, True, True, False, False, True, False]),
        torch.tensor([0, 1, -1, 7, -123456, 2**30 - 1, -(2**30), 65536], dtype=torch.int32),
        torch.tensor([0.0, -0.0, 0.1, -1.5, 3.14159, 1000.0, -30000.0, 2**-24], dtype=torch.float16),
    )
    return Model(
        name="dtypes",
        max_batch_size=0,
        inputs=[
            Io("u8", "UINT8", (8,)),
            Io("flag", "BOOL", (8,)),
            Io("i32", "INT32", (8,)),
            Io("half", "FP16", (8,)),
        ],
        outputs=[
            Io("u8_plus_one", "UINT8", (8,)),
            Io("not_flag", "BOOL", (8,)),
            Io("i32_times_two", "INT32", (8,)),
            Io("half_times_two", "FP16", (8,)),
        ],
        config_tail=[],
        versions={1: script(Dtypes())},
        example=example,
    )


class BatchProbe(nn.Module):
    def forward(self, value: Tensor, work: Tensor) -> tuple[Tensor, Tensor]:
        # One iteration is a 256x256 FP32 matmul: about 0.35 ms on one core of the
        # 2-core x86 machine this was written on (work=100 took 35 ms), and many times
        # that when torch has more intra-op threads than there are idle cores.
        # The matrix is all zeros, so it stays exactly zero (no overflow, no subnormal
        # slow paths) and adding an element of it leaves the output exact, while the
        # matmuls still run: TorchScript does not fold a loop whose trip count comes
        # from input data.
        spin = torch.zeros(256, 256, dtype=value.dtype, device=value.device)
        for _ in range(int(work.max())):
            spin = torch.mm(spin, spin)
        batch = value.shape[0]
        seen = torch.full([batch, 1], batch, dtype=torch.int64, device=value.device)
        return value * 2 + spin[0, 0], seen


def batch_probe() -> Model:
    return Model(
        name="batch_probe",
        max_batch_size=16,
        inputs=[Io("INPUT__0", "FP32", (1,)), Io("INPUT__1", "INT64", (1,))],
        outputs=[Io("OUTPUT__0", "FP32", (1,)), Io("OUTPUT__1", "INT64", (1,))],
        config_tail=[
            # The 100 ms window lets concurrent test requests land in one batch; the
            # short queue lets tests overload it.
            "dynamic_batching {",
            "  max_queue_delay_microseconds: 100000",
            "  default_queue_policy { max_queue_size: 8 }",
            "}",
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
        ],
        versions={1: script(BatchProbe())},
        example=None,
    )


class Strings(nn.Module):
    def forward(self, text: list[str]) -> tuple[Tensor, list[str]]:
        lengths = torch.tensor([len(t) for t in text], dtype=torch.int64).unsqueeze(1)
        return lengths, [t.upper() for t in text]


def strings() -> Model:
    return Model(
        name="strings",
        max_batch_size=8,
        inputs=[Io("TEXT", "BYTES", (1,))],
        outputs=[Io("LENGTH", "INT64", (1,)), Io("UPPER", "BYTES", (1,))],
        config_tail=[
            "dynamic_batching { max_queue_delay_microseconds: 1000 }",
            'model_warmup [ { name: "empty strings" batch_size: 2 inputs { key: "TEXT" '
            "value: { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } } ]",
        ],
        versions={1: script(Strings())},
        # Its outputs are plain to compute in a test: no expected.json entry.
        example=None,
    )


class Affine(nn.Module):
    """tanh(W x + b): small, and every output depends on every input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, features: Tensor) -> Tensor:
        return torch.tanh(self.linear(features))


class Pre(Affine):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.linear(x))


class Join(nn.Module):
    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return left * 2.0 + right


def vdag_model(name: str, module_type: type[nn.Module], seed: int, inputs: list[str], output: str) -> Model:
    torch.manual_seed(seed)
    module = module_type()
    return Model(
        name=name,
        max_batch_size=8,
        inputs=[Io(i, "FP32", (4,)) for i in inputs],
        outputs=[Io(output, "FP32", (4,))],
        config_tail=["dynamic_batching { max_queue_delay_microseconds: 500 }"],
        versions={1: script(module)},
        example=None,
    )


def vdag_models() -> list[Model]:
    # The forward's argument names are the input names: the server binds
    # inputs by name.
    return [
        vdag_model("vdag_pre", Pre, 11, ["x"], "features"),
        vdag_model("vdag_left", Affine, 12, ["features"], "left"),
        vdag_model("vdag_right", Affine, 13, ["features"], "right"),
        vdag_model("vdag_join", Join, 0, ["left", "right"], "y"),
    ]


def vdag_expected(out_dir: Path) -> dict:
    """The graphs the vDAG tests build, run here on the saved models."""

    def load(name: str) -> torch.jit.ScriptModule:
        return torch.jit.load(str(out_dir / name / "1" / "model.pt"), map_location="cpu")

    pre, left, right, join = (load(f"vdag_{n}") for n in ("pre", "left", "right", "join"))
    torch.manual_seed(200)
    x = torch.randn(2, 4)

    def flat(t: Tensor) -> list[float]:
        return t.reshape(-1).tolist()

    with torch.inference_mode():
        features = pre(x)
        return {
            "x": flat(x),
            "shape": list(x.shape),
            # pre -> left -> right, the edge mapping left onto features
            "chain": {"right": flat(right(left(features)))},
            # pre -> (left, right) -> join
            "diamond": {"y": flat(join(left(features), right(features)))},
            # pre -> left and pre -> right, both tails
            "two_tails": {"left/left": flat(left(features)), "right/right": flat(right(features))},
        }


def config_pbtxt(model: Model) -> str:
    def tensors(kind: str, ios: list[Io]) -> list[str]:
        entries = [
            f'  {{ name: "{io.name}" data_type: TYPE_{CONFIG_TYPES.get(io.datatype, io.datatype)} '
            f"dims: [ {', '.join(map(str, io.dims))} ] }}"
            for io in ios
        ]
        return [f"{kind} [", ",\n".join(entries), "]"]

    lines = [
        f'name: "{model.name}"',
        'platform: "pytorch_libtorch"',
        f"max_batch_size: {model.max_batch_size}",
        *tensors("input", model.inputs),
        *tensors("output", model.outputs),
        *model.config_tail,
    ]
    return "\n".join(lines) + "\n"


def tensor_json(io: Io, tensor: Tensor, batch: list[int]) -> dict:
    # Catch a model that disagrees with its own config here rather than in Rust.
    shape = batch + list(io.dims)
    assert tensor.dtype == TORCH_DTYPES[io.datatype], (io, tensor.dtype)
    assert list(tensor.shape) == shape, (io, tensor.shape)
    return {
        "name": io.name,
        "datatype": io.datatype,
        "shape": shape,
        "data": tensor.reshape(-1).tolist(),
    }


def expected_for(model: Model, path: Path) -> dict:
    """Run the example through the file just written, as the server will load it."""
    assert model.example is not None
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        outputs = module(*model.example)
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    batch = [model.example[0].shape[0]] if model.max_batch_size > 0 else []
    return {
        "inputs": [tensor_json(io, t, batch) for io, t in zip(model.inputs, model.example, strict=True)],
        "outputs": [tensor_json(io, t, batch) for io, t in zip(model.outputs, outputs, strict=True)],
    }


def write_model(model: Model, out_dir: Path) -> dict:
    model_dir = out_dir / model.name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model))
    expected = {}
    for version, module in model.versions.items():
        path = model_dir / str(version) / "model.pt"
        path.parent.mkdir(exist_ok=True)
        module.save(str(path))
        if model.example is not None:
            expected[str(version)] = expected_for(model, path)
    print(f"{model.name}: versions {', '.join(map(str, model.versions))} -> {model_dir}")
    return expected


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)

    # One thread and deterministic kernels: the same expected.json bytes every run.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    expected = {}
    for model in [build() for build in (mlp, cnn, two_io, dtypes, batch_probe, strings)] + vdag_models():
        if versions := write_model(model, out_dir):
            expected[model.name] = versions
    vdag = vdag_expected(out_dir)
    (out_dir / "vdag_expected.json").write_text(json.dumps(vdag, sort_keys=True, indent=1) + "\n")
    (out_dir / "expected.json").write_text(json.dumps(expected, sort_keys=True, indent=1) + "\n")
    print(f"expected outputs -> {out_dir / 'expected.json'}")


if __name__ == "__main__":
    main()
