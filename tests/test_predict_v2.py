"""The V2 inference protocol through a real gunicorn, with the standard client (tritonclient.http)."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
import redis
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from shared import mlp, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import Server, StackEnv, start_server
from tests.redis_fixtures import delete_prefix

MAX_BATCH = 64
HIDDEN = 16
IMAGES = np.random.default_rng(11).integers(0, 256, (6, mlp.INPUT_SIZE), dtype=np.uint8)


def make_params(seed: int) -> list[np.ndarray]:
    """Return random 784-16-10 parameters."""
    return mlp.init_params((mlp.INPUT_SIZE, HIDDEN, mlp.CLASSES), np.random.default_rng(seed))


PARAMS = {1: make_params(1), 2: make_params(2)}


def expected(version: int, images: np.ndarray = IMAGES) -> np.ndarray:
    """Return what the pure core answers for uint8 images with a version's parameters."""
    return mlp.predict_proba(PARAMS[version], mlp.scale_pixels(images.reshape(len(images), -1)))


@dataclass
class Live:
    """A running server, a V2 client of it and the token predictions need."""

    server: Server
    client: triton.InferenceServerClient
    auth: dict[str, str]

    def headers(self) -> dict[str, str]:
        """Return a fresh dict of the auth header (tritonclient adds its own headers to the one given)."""
        return dict(self.auth)

    def post(self, route: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(
            f"{self.server.url}{route}", data=body, headers={**self.auth, **(headers or {})}, timeout=30
        )


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gunicorn with a predict token serving model `digits` v1 and v2 (v1 is production)."""
    tag = uuid.uuid4().hex[:8]
    token = f"predict-{tag}"
    extra = {"MNIST_PREDICT_TOKEN": token, "MNIST_MAX_BATCH": str(MAX_BATCH), "MNIST_DEFAULT_MODEL": "digits"}
    prefix, queue = f"test-{tag}:", f"training-{tag}"
    env = StackEnv(redis_url=redis_url, prefix=prefix, queue=queue, token=f"tok-{tag}", extra=extra)
    client = redis.Redis.from_url(redis_url)
    registry = Registry(client, Keys(env.prefix))
    for version in (1, 2):
        registry.publish("digits", serialization.model_to_bytes(PARAMS[version], {}), {})
    registry.set_alias("digits", "production", 1)
    server = start_server(env, tmp_path_factory.mktemp("v2"))
    v2_client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield Live(server, v2_client, {"Authorization": f"Bearer {token}"})
    v2_client.close()
    server.process.stop()
    delete_prefix(client, env.prefix)
    client.close()


def uint8_input(images: np.ndarray = IMAGES, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


# --- health and metadata --------------------------------------------------------------------------
def test_health_and_server_metadata(live: Live) -> None:
    assert live.client.is_server_live()
    assert live.client.is_server_ready()
    metadata = live.client.get_server_metadata()
    assert metadata["name"] == "mnist-service" and "binary_tensor_data" in metadata["extensions"]
    assert metadata["version"]


def test_model_readiness(live: Live) -> None:
    # With a predict token set, model readiness and metadata are reads: they take a token too.
    auth = live.headers()
    assert live.client.is_model_ready("digits", headers=auth)
    assert live.client.is_model_ready("digits", "2", headers=auth)
    assert not live.client.is_model_ready("digits", "9", headers=auth)
    assert not live.client.is_model_ready("absent", headers=auth)
    r = requests.get(f"{live.server.url}/v2/models/absent/ready", headers=auth, timeout=10)
    assert r.status_code == 404 and "no published version" in r.json()["error"]


def test_model_metadata(live: Live) -> None:
    metadata = live.client.get_model_metadata("digits", headers=live.headers())
    assert metadata["name"] == "digits" and metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "numpy"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]),
        "label": ("INT64", [-1]),
    }
    assert live.client.get_model_metadata("digits", "2", headers=live.headers())["versions"] == ["2"]
    with pytest.raises(InferenceServerException, match="no version 9"):
        live.client.get_model_metadata("digits", "9", headers=live.headers())


# --- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_with_the_standard_client(live: Live, binary_in: bool, binary_out: bool) -> None:
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary_out),
        triton.InferRequestedOutput("label", binary_data=binary_out),
    ]
    result = live.client.infer(
        "digits", [uint8_input(binary=binary_in)], outputs=outputs, request_id="req-7", headers=live.headers()
    )
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits", "1", "req-7")
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (6, 10)
    np.testing.assert_allclose(probs, expected(1), atol=1e-5)
    labels = result.as_numpy("label")
    assert labels.dtype == np.int64 and labels.tolist() == expected(1).argmax(axis=1).tolist()


def test_infer_a_version_fp32_and_default_outputs(live: Live) -> None:
    tensor = triton.InferInput("input", [6, 784], "FP32")
    tensor.set_data_from_numpy(IMAGES.astype(np.float32), binary_data=True)  # pixels 0–255 as floats
    result = live.client.infer("digits", [tensor], model_version="2", headers=live.headers())
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(2), atol=1e-5)
    assert result.as_numpy("label").tolist() == expected(2).argmax(axis=1).tolist()


def test_infer_28x28_and_unit_range_over_plain_http(live: Live) -> None:
    unit = (IMAGES / 255).reshape(6, 28, 28).tolist()
    tensor = {"name": "input", "shape": [6, 28, 28], "datatype": "FP32", "data": unit}
    request = {"inputs": [{**tensor, "parameters": {"pixel_range": "unit"}}], "outputs": [{"name": "label"}]}
    r = live.post("/v2/models/digits/infer", orjson.dumps(request))
    assert r.status_code == 200, r.text
    body = r.json()
    # No id in the request: the answer names a generated one, the same as its X-Request-Id.
    assert body["id"] == r.headers["X-Request-Id"] and len(body["id"]) == 32
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0] == {
        "name": "label", "datatype": "INT64", "shape": [6], "data": expected(1).argmax(axis=1).tolist()
    }  # fmt: skip


def test_binary_response_layout(live: Live) -> None:
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [6, 784], "datatype": "UINT8",
                                       "parameters": {"binary_data_size": IMAGES.size}}],
                           "parameters": {"binary_data_output": True}})  # fmt: skip
    r = live.post(
        "/v2/models/digits/infer",
        header + IMAGES.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    size = int(r.headers["Inference-Header-Content-Length"])
    meta = orjson.loads(r.content[:size])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert sizes == [6 * 10 * 4, 6 * 8] and len(r.content) == size + sum(sizes)
    probs = np.frombuffer(r.content[size : size + sizes[0]], "<f4").reshape(6, 10)
    np.testing.assert_allclose(probs, expected(1), atol=1e-5)
    assert list(struct.unpack("<6q", r.content[size + sizes[0] :])) == expected(1).argmax(axis=1).tolist()


# --- errors ---------------------------------------------------------------------------------------
def tensor_json(**overrides) -> bytes:
    """Return an inference request of one JSON tensor, with fields overridden."""
    return orjson.dumps({"inputs": [TENSOR | overrides]})


def request_json(**fields) -> bytes:
    """Return an inference request of a valid tensor plus request-level fields."""
    return orjson.dumps({"inputs": [TENSOR], **fields})


def binary_header(size: int) -> bytes:
    """Return a request whose one UINT8 [1, 784] input declares `size` binary bytes."""
    tensor = {
        "name": "input",
        "shape": [1, 784],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": size},
    }
    return orjson.dumps({"inputs": [tensor]})


TENSOR = {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}
UNIT = {"pixel_range": "unit"}
NO_DATA = {k: v for k, v in TENSOR.items() if k != "data"}
LENGTH = "Inference-Header-Content-Length"
CLASSIFY = {"name": "label", "parameters": {"classification": 3}}
BAD = [
    ("not JSON", b"{", {}, 400, "not valid JSON"),
    ("not an object", b"[]", {}, 400, "JSON object"),
    ("unknown field", orjson.dumps({"inputs": [], "signature": 1}), {}, 400, "unknown fields"),
    ("no inputs", b"{}", {}, 400, "exactly one tensor"),
    ("two inputs", orjson.dumps({"inputs": [{}, {}]}), {}, 400, "exactly one tensor"),
    ("wrong input name", tensor_json(name="x"), {}, 400, "unknown input 'x'"),
    ("bad datatype", tensor_json(datatype="BYTES"), {}, 400, "datatype 'BYTES'"),
    ("bad shape", tensor_json(shape=[1, 783]), {}, 400, "shape [1, 783]"),
    ("shape not ints", tensor_json(shape=[1, "784"]), {}, 400, "list of integers"),
    ("shape with bool", tensor_json(shape=[True, 784]), {}, 400, "list of integers"),
    ("empty batch", tensor_json(shape=[0, 784], data=[]), {}, 400, "0 images"),
    ("batch too large", tensor_json(shape=[MAX_BATCH + 1, 784]), {}, 413, "limit is 64"),
    ("no data", orjson.dumps({"inputs": [NO_DATA]}), {}, 400, "neither"),
    ("data count", tensor_json(data=[0] * 783), {}, 400, "783 values"),
    ("data above the batch", tensor_json(data=[0] * 60_000), {}, 413, "64 images (MNIST_MAX_BATCH)"),
    ("data ragged", tensor_json(data=[[0] * 392, [0] * 391]), {}, 400, "ragged"),
    ("data strings", tensor_json(data=["0"] * 784), {}, 400, "not numbers"),
    ("data booleans", tensor_json(data=[False] * 784), {}, 400, "boolean"),
    ("data null", tensor_json(data=None), {}, 400, "list of numbers"),
    ("uint8 fractions", tensor_json(data=[0.5] * 784), {}, 400, "whole numbers"),
    ("uint8 above 255", tensor_json(data=[256] * 784), {}, 400, "outside"),
    ("fp32 above 1", tensor_json(datatype="FP32", data=[2.0] * 784, parameters=UNIT), {}, 400, "outside"),
    ("uint8 unit", tensor_json(parameters=UNIT), {}, 400, "UINT8 inputs"),
    ("bad pixel_range", tensor_json(parameters={"pixel_range": "x"}), {}, 400, "pixel_range"),
    ("unknown output", request_json(outputs=[{"name": "z"}]), {}, 400, "unknown output 'z'"),
    ("output twice", request_json(outputs=[{"name": "label"}, {"name": "label"}]), {}, 400, "twice"),
    ("classification", request_json(outputs=[CLASSIFY]), {}, 400, "classification"),
    ("binary_data_output text", request_json(parameters={"binary_data_output": 1}), {}, 400, "true or false"),
    ("id not a string", request_json(id=7), {}, 400, "id must be a string"),
    ("header length bad", tensor_json(), {LENGTH: "abc"}, 400, LENGTH),
    ("header length too long", tensor_json(), {LENGTH: "99999"}, 400, LENGTH),
    ("binary size wrong", binary_header(700), {}, 400, "binary_data_size is 700"),
    ("binary missing", binary_header(784), {}, 400, "carries 0 bytes"),
    ("data and binary", tensor_json(parameters={"binary_data_size": 784}), {}, 400, "both"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_requests_get_v2_errors(
    live: Live, body: bytes, headers: dict, status: int, fragment: str
) -> None:
    r = live.post("/v2/models/digits/infer", body, headers)
    assert r.status_code == status, r.text
    error = r.json()
    assert fragment in error["error"] and error["error"] == error["message"] and error["code"] == status


def binary_request(array: np.ndarray, datatype: str, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    raw = array.tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(array.shape), "datatype": datatype,
                                       "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    return header + raw + extra, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("array", "datatype", "extra", "fragment"),
    [
        (np.full((1, 784), np.nan, "<f4"), "FP32", b"", "NaN or Inf"),
        (np.full((1, 784), np.inf, "<f8"), "FP64", b"", "NaN or Inf"),
        (np.full((1, 784), 300, "<f4"), "FP32", b"", "outside"),
        (np.zeros((1, 784), np.uint8), "UINT8", b"left over", "carries 793 bytes"),
    ],
    ids=["nan", "inf", "range", "trailing-bytes"],
)
def test_bad_binary_tensors(
    live: Live, array: np.ndarray, datatype: str, extra: bytes, fragment: str
) -> None:
    body, headers = binary_request(array, datatype, extra)
    r = live.post("/v2/models/digits/infer", body, headers)
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_unknown_models_routes_and_methods_get_v2_errors(live: Live) -> None:
    with pytest.raises(InferenceServerException) as caught:
        live.client.infer("absent", [uint8_input()], headers=live.headers())
    assert caught.value.status() == "404" and "no published version" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        live.client.infer("digits", [uint8_input()], model_version="9", headers=live.headers())
    assert caught.value.status() == "404"
    for method, route, status in (("GET", "/v2/models/digits/infer", 405), ("GET", "/v2/nowhere", 404)):
        r = requests.request(method, f"{live.server.url}{route}", timeout=10)
        assert r.status_code == status and r.json()["error"] and r.json()["code"] == status


def test_the_predict_token_is_required(live: Live) -> None:
    with pytest.raises(InferenceServerException) as caught:
        live.client.infer("digits", [uint8_input()])
    assert caught.value.status() == "401" and "Bearer" in caught.value.message()
    assert live.client.is_server_ready() and live.client.is_server_live()  # health stays open
    assert live.client.get_server_metadata()["name"] == "mnist-service"
    # Model metadata and readiness reveal or load a model: they need a token once one is set.
    with pytest.raises(InferenceServerException) as caught:
        live.client.get_model_metadata("digits")
    assert caught.value.status() == "401"
    assert not live.client.is_model_ready("digits")
    r = requests.get(f"{live.server.url}/v2/models/digits/ready", timeout=10)
    assert r.status_code == 401 and r.json()["error"]  # V2's error key, as every /v2 error
