"""`/predict/digits`: a registered DigitClassifier served through the generic cache and routes."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.testing import AsyncTestClient
from sklearn.datasets import load_digits

from mlops_assets.digits.dataset import LabelledDigits, split_digits, validate_digits
from mlops_assets.digits.families import KNOWN_GOOD, SKOPS_TRUSTED_TYPES, DigitClassifier, build_classifier
from mlops_assets.digits.png import digit_to_png
from mlops_assets_tests.serving.support import fluent_mlflow_at, wait_ready

pytestmark = pytest.mark.anyio
PATH = "/predict/digits"


@pytest.fixture(scope="module")
def holdout() -> LabelledDigits:
    bunch = load_digits()
    return split_digits(validate_digits(bunch.images, bunch.target)).test


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, DigitClassifier]:
    """An SVC digit classifier (with its neighbour index) registered as the `digit_classifier` champion."""
    import mlflow
    import mlflow.models

    bunch = load_digits()
    train = split_digits(validate_digits(bunch.images, bunch.target)).train
    model = build_classifier(dict(KNOWN_GOOD)).fit(train.images, train.labels)
    uri = f"sqlite:///{tmp_path_factory.mktemp('digits-serving') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
        with fluent_mlflow_at(uri), mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)
            version = mlflow.register_model(info.model_uri, "digit_classifier")
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "digit_classifier", "champion", version.version
    )
    return uri, model


@pytest.fixture
async def served(
    registered: tuple[str, DigitClassifier],
) -> AsyncIterator[tuple[AsyncTestClient[Litestar], DigitClassifier]]:
    from serving.app import create_app
    from serving.settings import ServingSettings

    uri, model = registered
    app = create_app(ServingSettings(mlflow_tracking_uri=uri, poll_seconds=0.2, models=("digit_classifier",)))
    async with AsyncTestClient(app) as client:
        await wait_ready(client)
        yield client, model


def _square(image: np.ndarray) -> list[list[float]]:
    return np.asarray(image, dtype=float).reshape(8, 8).tolist()


async def test_an_array_gets_the_digit_probabilities_and_three_nearest_training_images(
    served: tuple, holdout: LabelledDigits
) -> None:
    client, model = served
    for i, method in enumerate(("put", "post", "put", "post", "put")):
        image = holdout.images[i]
        response = await getattr(client, method)(PATH, json={"image": _square(image)})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = model.predict_proba(image[None, :])[0]
        assert body["digit"] == int(np.argmax(expected)) == int(model.predict(image[None, :])[0])
        np.testing.assert_allclose(body["probabilities"], expected, rtol=1e-12)
        assert body["model"] == {"name": "digit_classifier", "version": "1", "alias": "champion"}
        order, distances = model.nearest(image[None, :], 3)
        assert [n["label"] for n in body["nearest"]] == [int(model.index_labels_[j]) for j in order[0]]
        np.testing.assert_allclose([n["distance"] for n in body["nearest"]], distances[0], rtol=1e-9)
        assert np.asarray(body["nearest"][0]["image"]).shape == (8, 8)
        np.testing.assert_array_equal(np.asarray(body["nearest"][0]["image"]).ravel(), model.index_images_[order[0][0]])


async def test_a_png_drawing_gets_the_same_answer_as_the_array(served: tuple, holdout: LabelledDigits) -> None:
    """Through the route, on holdout images the dataset frames centrally (all of the holdout, with the
    re-centred rest, is covered by test_digits.py::test_a_scaled_up_inverted_dataset_image_comes_back_as_itself)."""
    client, _ = served
    cols = (holdout.images.reshape(-1, 8, 8) > 0).any(axis=1)
    framed = np.flatnonzero(cols.argmax(axis=1) == (8 - cols.sum(axis=1) + 1) // 2)
    for i in framed[::25]:
        image = holdout.images[i]
        array = (await client.put(PATH, json={"image": _square(image)})).json()
        png = base64.b64encode(digit_to_png(image, scale=12)).decode()
        drawn = await client.post(PATH, json={"png": png})
        assert drawn.status_code == 200, drawn.text
        assert drawn.json()["digit"] == array["digit"], i


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_ROW = [0.0] * 8
BLANK_PNG = digit_to_png(np.zeros(64), scale=5)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"image": [GOOD_ROW] * 7}, ["length >= 8", "$.image"]),
        ({"image": [GOOD_ROW] * 7 + [[0.0] * 9]}, ["length <= 8", "$.image[7]"]),
        ({"image": [[0.0] * 64]}, ["length <= 8", "$.image[0]"]),
        ({"image": [GOOD_ROW] * 7 + [[0, 0, 0, 17, 0, 0, 0, 0]]}, ["<= 16", "$.image[7][3]"]),
        ({"image": [[-1, *GOOD_ROW[1:]], *[GOOD_ROW] * 7]}, [">= 0", "$.image[0][0]"]),
        ({"image": [["x", *GOOD_ROW[1:]], *[GOOD_ROW] * 7]}, ["Expected `float`", "$.image[0][0]"]),
        ({}, ["exactly one of `image`", "`png`"]),
        ({"image": [GOOD_ROW] * 8, "png": _b64(BLANK_PNG)}, ["exactly one of"]),
        ({"images": [GOOD_ROW] * 8}, ["unknown field", "images"]),
        ({"png": "not base64!"}, ["base64", "$.png"]),
        ({"png": _b64(b"GIF89a....")}, ["not a PNG", "$.png"]),
        ({"png": _b64(BLANK_PNG)}, ["blank", "$.png"]),
        ({"png": _b64(_png_header(1, 1))}, ["1x1", "at least 8x8"]),
        ({"png": _b64(_png_header(60_000, 60_000))}, ["60000x60000", "limit"]),
        ({"png": _b64(digit_to_png(np.ones(64), 4)[:50])}, ["could not be decoded"]),
    ],
    ids=[
        "7-rows",
        "9-columns",
        "flat-64",
        "above-16",
        "negative",
        "not-a-number",
        "neither",
        "both",
        "unknown-field",
        "bad-base64",
        "not-png",
        "blank-page",
        "one-pixel",
        "bomb-header",
        "truncated-png",
    ],
)
async def test_bad_images_are_a_4xx_naming_the_problem(served: tuple, body: dict[str, Any], words: list[str]) -> None:
    client, _ = served
    response = await client.put(PATH, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert all(word in response.text for word in words), response.text


async def test_nan_and_non_json_bodies_are_4xx(served: tuple) -> None:
    client, _ = served
    row = "[" + ",".join(["0"] * 8) + "]"
    nan_body = '{"image": [[NaN,0,0,0,0,0,0,0],' + ",".join([row] * 7) + "]}"
    response = await client.put(PATH, content=nan_body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.text and "$.image[0][0]" in response.text
    response = await client.put(PATH, content=digit_to_png(np.ones(64)), headers={"content-type": "image/png"})
    assert response.status_code == 422  # a PNG body without ink
    response = await client.put(PATH, content=b"GIF89a....", headers={"content-type": "image/gif"})
    assert response.status_code == 415 and "image/gif" in response.text


async def test_a_raw_png_body_gets_the_answer_of_its_array(served: tuple) -> None:
    """`Content-Type: image/png`: the app hands the bytes to the module's decoder, not to JSON."""
    client, _ = served
    images = load_digits().images
    for index in (0, 3, 10):
        as_array = await client.put(PATH, json={"image": images[index].tolist()})
        as_png = await client.post(PATH, content=digit_to_png(images[index], 6), headers={"content-type": "image/png"})
        assert as_array.status_code == as_png.status_code == 200, as_png.text
        assert as_png.json()["digit"] == as_array.json()["digit"]
        assert len(as_png.json()["nearest"]) == 3


def test_decode_body_takes_png_bodies_and_refuses_other_media() -> None:
    from serving.errors import InvalidInput
    from serving.models.digit_classifier import DigitModel, DigitsRequest, build_input, decode_body

    image = load_digits().images[3]
    request = decode_body(digit_to_png(image, 6), "image/png")
    assert isinstance(request, DigitsRequest) and request.image is None
    pixels = build_input(DigitModel(classifier=None), request)
    assert pixels.shape == (1, 64)
    np.testing.assert_allclose(pixels[0], image.ravel(), atol=0.04)
    with pytest.raises(HTTPException) as refused:
        decode_body(b"GIF89a", "image/gif")
    assert refused.value.status_code == 415 and "image/gif" in refused.value.detail
    with pytest.raises(InvalidInput, match="empty"):
        decode_body(b"", "image/png; charset=binary")
    with pytest.raises(InvalidInput, match="not a PNG"):
        build_input(DigitModel(classifier=None), decode_body(b"GIF89a", "image/png"))


def test_loading_refuses_a_model_without_its_neighbour_index(tmp_path: Path) -> None:
    import mlflow.sklearn
    from sklearn.svm import SVC

    from serving.models.digit_classifier import load

    bunch = load_digits()
    model_dir = tmp_path / "model"  # a version's files, as the cache hands them to `load`
    mlflow.sklearn.save_model(SVC().fit(bunch.data[:200], bunch.target[:200]), str(model_dir))
    with pytest.raises(ValueError, match="expected a DigitClassifier, got SVC"):
        load(str(model_dir))
