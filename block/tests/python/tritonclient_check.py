"""Checks gridmesh-block with NVIDIA's own Python client, unchanged.

Usage: tritonclient_check.py GRPC_HOST:PORT EXPECTED_JSON

Run by block/tests/tritonclient.rs against a server on the repository that
block/models/make_test_models.py builds; EXPECTED_JSON is that script's
expected.json (inputs and the outputs PyTorch gave for them). Every check runs
even after one fails; the exit status is 1 if any failed.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NUMPY_TYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}

# The project's check-and-continue helpers live beside the other test scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "python"))
from checks import check, finish  # noqa: E402


def array(tensor: dict) -> np.ndarray:
    return np.array(tensor["data"], dtype=NUMPY_TYPES[tensor["datatype"]]).reshape(tensor["shape"])


def infer_inputs(example: dict) -> list[grpcclient.InferInput]:
    inputs = []
    for tensor in example["inputs"]:
        data = array(tensor)
        infer_input = grpcclient.InferInput(tensor["name"], list(data.shape), tensor["datatype"])
        infer_input.set_data_from_numpy(data)
        inputs.append(infer_input)
    return inputs


def compare(model: str, result, tensor: dict, exact: bool) -> None:
    name = tensor["name"]
    got = result.as_numpy(name)
    want = array(tensor)
    if got is None:
        check(False, f"{model}: no output {name}")
        return
    check(got.dtype == want.dtype, f"{model} {name}: dtype {got.dtype}, expected {want.dtype}")
    check(got.shape == want.shape, f"{model} {name}: shape {got.shape}, expected {want.shape}")
    if got.shape != want.shape:
        return
    if exact:
        # Bit for bit, signed zeros included.
        same = np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
        check(same, f"{model} {name}: {got.tolist()} != {want.tolist()}")
    else:
        # The Rust tests' FP32 tolerance: |a-b| <= 1e-5 + 1e-5*|b|.
        close = np.allclose(got, want, rtol=1e-5, atol=1e-5)
        check(close, f"{model} {name}: {got.tolist()} not close to {want.tolist()}")


def dims(values) -> list[int]:
    # MessageToJson writes int64 as strings.
    return [int(v) for v in values]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} GRPC_HOST:PORT EXPECTED_JSON")
    url, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    client = grpcclient.InferenceServerClient(url=url)

    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    for model in ("mlp", "cnn", "two_io", "dtypes", "batch_probe"):
        check(client.is_model_ready(model), f"is_model_ready({model})")
    for version in ("1", "2"):
        check(client.is_model_ready("mlp", version), f"is_model_ready(mlp, {version})")

    server = client.get_server_metadata(as_json=True)
    check(bool(server.get("name")), f"server metadata has a name: {server}")

    metadata = client.get_model_metadata("mlp", as_json=True)
    check(metadata.get("name") == "mlp", f"mlp metadata name: {metadata}")
    check(sorted(metadata.get("versions", [])) == ["1", "2"], f"mlp versions: {metadata}")
    check(metadata.get("platform") == "pytorch_libtorch", f"mlp platform: {metadata}")
    inputs = [(t["name"], t["datatype"], dims(t["shape"])) for t in metadata.get("inputs", [])]
    check(inputs == [("INPUT__0", "FP32", [-1, 16])], f"mlp metadata inputs: {inputs}")
    outputs = [(t["name"], t["datatype"], dims(t["shape"])) for t in metadata.get("outputs", [])]
    check(outputs == [("OUTPUT__0", "FP32", [-1, 4])], f"mlp metadata outputs: {outputs}")

    config = client.get_model_config("cnn", as_json=True).get("config", {})
    check(config.get("name") == "cnn", f"cnn config name: {config}")
    check(config.get("max_batch_size") == 64, f"cnn max_batch_size: {config}")
    batching = config.get("dynamic_batching", {})
    check(batching.get("preferred_batch_size") == [16, 32], f"cnn preferred_batch_size: {config}")
    config_inputs = config.get("input", [{}])
    check(
        config_inputs[0].get("name") == "image"
        and config_inputs[0].get("data_type") == "TYPE_FP32"
        and dims(config_inputs[0].get("dims", [])) == [3, 32, 32],
        f"cnn config input: {config_inputs}",
    )

    # Explicit versions, then the latest (no version: mlp 2).
    for model, version, request_version in (
        ("mlp", "1", "1"),
        ("mlp", "2", "2"),
        ("mlp", "2", ""),
        ("cnn", "1", "1"),
    ):
        example = expected[model][version]
        request_id = f"py-{model}-{request_version or 'latest'}"
        result = client.infer(
            model,
            infer_inputs(example),
            model_version=request_version,
            request_id=request_id,
        )
        response = result.get_response()
        check(response.id == request_id, f"{model}: id {response.id!r}, sent {request_id!r}")
        check(
            response.model_version == version,
            f"{model} {request_version!r}: answered by version {response.model_version!r}",
        )
        for tensor in example["outputs"]:
            compare(f"{model} {request_version!r}", result, tensor, exact=False)

    # Requested outputs.
    example = expected["two_io"]["1"]
    result = client.infer(
        "two_io",
        infer_inputs(example),
        outputs=[grpcclient.InferRequestedOutput("OUTPUT__1")],
    )
    names = [output.name for output in result.get_response().outputs]
    check(names == ["OUTPUT__1"], f"two_io requested OUTPUT__1, got {names}")
    compare("two_io", result, example["outputs"][1], exact=True)
    result = client.infer("two_io", infer_inputs(example))
    for tensor in example["outputs"]:
        compare("two_io", result, tensor, exact=True)

    # UINT8, BOOL, INT32 and FP16 through numpy.
    example = expected["dtypes"]["1"]
    result = client.infer("dtypes", infer_inputs(example))
    for tensor in example["outputs"]:
        compare("dtypes", result, tensor, exact=True)

    # BYTES: numpy object arrays of str in, bytes out (TorchScript List[str]).
    words = ["gridmesh", "", "block server"]
    text = grpcclient.InferInput("TEXT", [len(words), 1], "BYTES")
    text.set_data_from_numpy(np.array(words, dtype=object).reshape(-1, 1))
    result = client.infer("strings", [text])
    lengths = result.as_numpy("LENGTH")
    upper = result.as_numpy("UPPER")
    check(lengths.ravel().tolist() == [len(w) for w in words], f"strings LENGTH: {lengths}")
    check(
        [u.decode() for u in upper.ravel()] == [w.upper() for w in words] and upper.shape == (3, 1),
        f"strings UPPER: {upper!r}",
    )

    # mlp version 1 ran one request of 3 rows above.
    deadline = time.monotonic() + 5
    while True:
        stats = client.get_inference_statistics("mlp", "1", as_json=True)
        entries = stats.get("model_stats", [])
        entry = entries[0] if len(entries) == 1 else {}
        # MessageToJson leaves out zeros and writes uint64 as strings.
        counts = (int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0)))
        if counts == (3, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    check(len(entries) == 1 and entry.get("name") == "mlp", f"mlp 1 statistics: {stats}")
    check(counts == (3, 1), f"mlp 1 (inference_count, execution_count) = {counts}: {stats}")
    success = entry.get("inference_stats", {}).get("success", {})
    check(int(success.get("count", 0)) == 1, f"mlp 1 success count: {stats}")

    # Errors arrive as InferenceServerException with the gRPC status.
    for call, what in (
        (lambda: client.infer("no_such_model", infer_inputs(expected["mlp"]["1"])), "infer"),
        (lambda: client.get_model_metadata("no_such_model"), "get_model_metadata"),
    ):
        try:
            call()
            check(False, f"{what} of an unknown model succeeded")
        except InferenceServerException as error:
            check(
                error.status() == "StatusCode.NOT_FOUND",
                f"{what} of an unknown model: status {error.status()}, message {error.message()}",
            )

    client.close()
    finish()


if __name__ == "__main__":
    main()
