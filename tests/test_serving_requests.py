"""What TF Serving's clients send reaches the SavedModel's signatures.

A gRPC client sends a `PredictRequest` of `TensorProto`s: uint8 for the
pixels of most image decoders, int64 for ids that went through JSON and
NumPy. The server turns each proto into a tensor (`tf.make_ndarray`) and
calls the named signature, which must take that dtype: `serving_default`
takes the model's own (float32 images, int32 ids) and refuses the others,
so `export_saved_model` adds `serving_uint8` and `serving_int64`. A REST
client sends JSON `instances`, which the server converts to the signature's
dtype. The docs' request snippets are read from docs/deployment.md, the
page the README sends readers to for the REST call (test_docs.py runs them;
here their request is served).
"""

import json
import pathlib
import re

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel export and TF Serving requests are TensorFlow-only",
)
tf = pytest.importorskip("tensorflow")
predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIXELS = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)


def _image_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    return kgp.build_classifier(
        keras.Model(inputs, x), 3, input_shape=(16, 16, 3), preprocessing="tf"
    )


def _token_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    x = kgp.GlobalAttentionPooling()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    model = _image_model()
    path = kgp.export_saved_model(model, tmp_path_factory.mktemp("images") / "m")
    return model, tf.saved_model.load(path)


@pytest.fixture(scope="module")
def token_export(tmp_path_factory):
    model = _token_model()
    path = kgp.export_saved_model(model, tmp_path_factory.mktemp("tokens") / "m")
    return model, tf.saved_model.load(path)


def _serve(loaded, request):
    """What TF Serving does with a `PredictRequest` that reached it."""
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    signature = loaded.signatures[request.model_spec.signature_name]
    inputs = {
        name: tf.constant(tf.make_ndarray(proto))
        for name, proto in request.inputs.items()
    }
    return {name: value.numpy() for name, value in signature(**inputs).items()}


def _dtypes(signature):
    specs = signature.structured_input_signature[1]
    return {name: spec.dtype for name, spec in specs.items()}


def _input_dtypes(loaded):
    return {name: _dtypes(function) for name, function in loaded.signatures.items()}


def test_uint8_predict_request(image_export):
    model, loaded = image_export
    assert _input_dtypes(loaded) == {
        "serving_default": {"images": tf.float32},
        "serving_uint8": {"images": tf.uint8},
    }
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "serving_uint8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(PIXELS))
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    served = _serve(loaded, request)

    floats = tf.constant(PIXELS.astype("float32"))
    default = loaded.signatures["serving_default"](images=floats)
    assert sorted(served) == sorted(default) == ["class_ids", "probabilities"]
    for name, value in default.items():
        np.testing.assert_array_equal(served[name], value.numpy())
    expected = model.predict(PIXELS.astype("float32"), verbose=0)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], expected.argmax(axis=-1))


def test_default_signature_refuses_uint8(image_export):
    # Why `serving_uint8` exists: the server would answer this request so.
    _, loaded = image_export
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        loaded.signatures["serving_default"](images=tf.constant(PIXELS))


def test_json_ids_through_the_int64_signature(token_export):
    model, loaded = token_export
    ids = np.array(json.loads("[[3, 5, 0], [0, 0, 0]]"))
    assert ids.dtype == np.int64
    assert _input_dtypes(loaded) == {
        "serving_default": {"images": tf.int32},
        "serving_int64": {"images": tf.int64},
    }
    with pytest.raises(tf.errors.InvalidArgumentError, match="int64"):
        loaded.signatures["serving_default"](images=tf.constant(ids))
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_int64"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(ids))
    served = _serve(loaded, request)
    assert sorted(served) == ["class_ids", "probabilities"]
    expected = model.predict(ids.astype("int32"), verbose=0)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], expected.argmax(axis=-1))


# === The docs' requests ===


def _deployment_page():
    """The page the README sends readers to for the REST call."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (link,) = set(re.findall(r"\[Deployment\]\((docs/[\w-]+\.md)\)", readme))
    return (ROOT / link).read_text(encoding="utf-8")


def _python_block(page, needle):
    (block,) = [
        block
        for block in re.findall(r"^```python\n(.*?)^```$", page, re.M | re.S)
        if needle in block
    ]
    return block


def _rest_rows(body, loaded):
    """TF Serving's row format: `instances` stacked into the signature's tensors."""
    signature = loaded.signatures[body["signature_name"]]
    specs = signature.structured_input_signature[1]
    instances = body["instances"]
    assert all(set(instance) == set(specs) for instance in instances)
    return signature, {
        name: tf.constant(
            np.array([instance[name] for instance in instances]),
            spec.dtype,
        )
        for name, spec in specs.items()
    }


def test_docs_rest_body_is_served(image_export):
    model, loaded = image_export
    images = PIXELS.astype("float32")
    namespace = {"images": images}
    exec(_python_block(_deployment_page(), '"instances"'), namespace)
    body = json.loads(namespace["body"])
    signature, inputs = _rest_rows(body, loaded)
    served = signature(**inputs)
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], expected.argmax(axis=-1))


def test_docs_curl_call_names_the_signature_and_outputs(image_export):
    _, loaded = image_export
    page = _deployment_page()
    # The curl body and its answer, with their `...` elisions removed.
    (request,) = re.findall(r"-d '(\{.*\})'", page)
    (answer,) = re.findall(r'^(\{"predictions".*\})$', page, re.M)
    request = json.loads(request.replace(", ...", ""))
    answer = json.loads(answer.replace(", ...", ""))
    signature, inputs = _rest_rows(request, loaded)
    # One nested list per image: rows of pixels of channels.
    images = signature.structured_input_signature[1]["images"]
    assert inputs["images"].shape.rank == images.shape.rank
    (prediction,) = answer["predictions"]
    assert set(prediction) == set(signature.structured_outputs)


def test_docs_grpc_request_is_served(image_export):
    model, loaded = image_export
    namespace = {"images": PIXELS.astype("float32")}
    exec(_python_block(_deployment_page(), "predict_pb2"), namespace)
    served = _serve(loaded, namespace["request"])
    expected = model.predict(PIXELS.astype("float32"), verbose=0)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-5)
