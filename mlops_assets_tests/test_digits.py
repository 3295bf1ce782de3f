"""The digits pipeline without Ray: data validation, split, the classifier and its neighbour index,
the skops round trip through a real MLflow store, the image table, and PNG -> 8x8."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from mlops_assets.digits.assets import digit_images
from mlops_assets.digits.dataset import (
    DigitsDataError,
    LabelledDigits,
    read_npz,
    split_digits,
    validate_digits,
    validation_split,
)
from mlops_assets.digits.families import (
    KNOWN_GOOD,
    SKOPS_TRUSTED_TYPES,
    DigitClassifier,
    baselines,
    build_classifier,
    error_rate,
)
from mlops_assets.digits.png import ImageError, digit_to_png, png_size, png_to_digit, to_dataset_form
from mlops_assets.digits.source import BundledDigitsSource, NpzDigitsSource
from mlops_assets.digits.table import read_digit_images
from mlops_assets.resources.warehouse import WarehouseResource


@pytest.fixture(scope="module")
def digits() -> LabelledDigits:
    bunch = load_digits()
    return validate_digits(bunch.images, bunch.target)


@pytest.fixture(scope="module")
def svc(digits: LabelledDigits) -> DigitClassifier:
    split = split_digits(digits)
    return build_classifier(dict(KNOWN_GOOD)).fit(split.train.images, split.train.labels)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


# --- data contract -------------------------------------------------------------------------------


def _good(n_per_class: int = 3) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), n_per_class)
    images = np.random.default_rng(0).integers(0, 17, size=(len(labels), 8, 8)).astype(float)
    return images, labels


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda images, labels: (images[:, :7, :], labels),
            "images must have shape (n, 8, 8) or (n, 64), got (30, 7, 8)",
        ),
        (
            lambda images, labels: (np.where(np.arange(64).reshape(8, 8) == 9, np.nan, images), labels),
            "30 images contain NaN or infinite pixels, e.g. image 0",
        ),
        (lambda images, labels: (images * 2 + 1, labels), "pixels must be in 0..16"),
        (lambda images, labels: (-images - 1, labels), "pixels must be in 0..16"),
        (
            lambda images, labels: (images, np.where(labels == 9, 10, labels)),
            "labels must be the integers 0..9; 3 are not, e.g. label 10",
        ),
        (lambda images, labels: (images, labels.astype(float) + 0.5), "labels must be the integers 0..9"),
        (lambda images, labels: (images, labels[:-1]), "labels must be one per image (30)"),
        (
            lambda images, labels: (images[labels != 4][:-2], np.r_[labels[labels != 4][:-2]]),
            "at least 2 images; too few of {4: 0, 9: 1}",
        ),
        (lambda images, labels: (np.array([["a"] * 64] * 30), labels), "images are not numeric"),
    ],
    ids=[
        "shape",
        "nan",
        "above-16",
        "negative",
        "label-10",
        "label-fraction",
        "label-count",
        "too-few-per-class",
        "text",
    ],
)
def test_bad_data_is_refused_with_the_rule_it_breaks(change, message: str) -> None:
    images, labels = change(*_good())
    with pytest.raises(DigitsDataError) as error:
        validate_digits(images, labels, origin="x.npz")
    assert message in str(error.value) and str(error.value).startswith("x.npz: ")


def test_flat_and_square_images_are_the_same_data() -> None:
    images, labels = _good()
    square, flat = validate_digits(images, labels), validate_digits(images.reshape(30, 64), labels)
    np.testing.assert_array_equal(square.images, flat.images)
    assert square.images.shape == (30, 64) and square.labels.dtype == np.int64


def test_npz_files_load_and_broken_ones_say_why(tmp_path: Path) -> None:
    images, labels = _good()
    np.savez(tmp_path / "good.npz", images=images, labels=labels)
    assert len(read_npz(tmp_path / "good.npz")) == 30
    np.savez(tmp_path / "nolabels.npz", images=images, y=labels)
    with pytest.raises(DigitsDataError, match=r"missing arrays \['labels'\]"):
        read_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "objects.npz", images=np.array([object()] * 3), labels=labels[:3])
    with pytest.raises(DigitsDataError, match=r"not a readable .npz"):
        read_npz(tmp_path / "objects.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DigitsDataError, match=r"not a readable .npz"):
        read_npz(tmp_path / "text.npz")
    with pytest.raises(DigitsDataError, match="no such file"):
        read_npz(tmp_path / "missing.npz")


def test_the_split_is_stratified_seeded_and_validation_comes_from_train(digits: LabelledDigits) -> None:
    first, second = split_digits(digits), split_digits(digits)
    np.testing.assert_array_equal(first.test.images, second.test.images)
    assert len(first.test) == 450 and len(first.train) == 1347
    for part in (first.train, first.test):
        shares = np.array(list(part.class_counts().values())) / len(part)
        assert np.all(np.abs(shares - 0.1) < 0.01)
    test_rows = {row.tobytes() for row in first.test.images}
    inner = validation_split(first.train)
    assert not any(row.tobytes() in test_rows for row in inner.test.images)
    assert len(inner.train) + len(inner.test) == len(first.train)
    with pytest.raises(DigitsDataError, match="too few for a stratified"):
        split_digits(validate_digits(*_good(2)))


# --- the classifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["svc", "nca_knn", "mlp"])
def test_each_family_beats_the_baselines_and_its_digit_is_the_top_probability(
    digits: LabelledDigits, family: str
) -> None:
    split = split_digits(digits)
    model = build_classifier({**KNOWN_GOOD, "family": family}).fit(split.train.images, split.train.labels)
    probabilities = model.predict_proba(split.test.images)
    assert probabilities.shape == (450, 10) and np.allclose(probabilities.sum(axis=1), 1.0)
    predicted = model.predict(split.test.images)
    np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))
    base = baselines(split.train, split.test)
    accuracy = 1 - error_rate(predicted, split.test.labels)
    assert accuracy >= 0.97, (family, accuracy)
    assert base.majority > 0.85 and 0.005 < base.knn3_raw < 0.03, base


def test_the_neighbour_index_finds_the_training_image_itself(digits: LabelledDigits, svc: DigitClassifier) -> None:
    split = split_digits(digits)
    assert svc.index_images_.shape == (1347, 64) and len(svc.index_labels_) == 1347
    order, distances = svc.nearest(split.train.images[:20], k=3)
    assert order.shape == distances.shape == (20, 3)
    np.testing.assert_array_equal(order[:, 0], np.arange(20))
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0)
    nca = build_classifier({**KNOWN_GOOD, "family": "nca_knn"}).fit(split.train.images, split.train.labels)
    assert nca.index_embedding_.shape == (1347, 16)  # neighbours are searched in the learned projection
    order, _ = nca.nearest(split.test.images[:50], k=1)
    agreement = np.mean(nca.index_labels_[order[:, 0]] == split.test.labels[:50])
    assert agreement >= 0.94
    np.testing.assert_allclose(
        nca.embed(split.test.images), nca.embedding_.transform(split.test.images / 16), rtol=1e-12
    )
    for model in (svc, nca):  # what the service calls: one embedding for both answers
        probabilities, order, distances = model.explain(split.test.images[:7], k=3)
        np.testing.assert_array_equal(probabilities, model.predict_proba(split.test.images[:7]))
        expected_order, expected_distances = model.nearest(split.test.images[:7], k=3)
        np.testing.assert_array_equal(order, expected_order)
        np.testing.assert_array_equal(distances, expected_distances)


def test_unknown_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown digits hyperparameters \['gamma'\]"):
        build_classifier({"family": "svc", "gamma": 1})
    with pytest.raises(ValueError, match="family must be one of"):
        build_classifier({"family": "cnn"})


def test_the_model_round_trips_through_mlflow_without_pickle(
    tmp_path: Path, digits: LabelledDigits, svc: DigitClassifier
) -> None:
    import mlflow.models

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    split = split_digits(digits)
    models = [svc]
    for config in ({"family": "nca_knn", "nca_components": 2}, {"family": "mlp", "mlp_hidden": 8}, {"family": "knn"}):
        models.append(build_classifier({**KNOWN_GOOD, **config}).fit(split.train.images, split.train.labels))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: list(fallback or []))
        mlflow.set_tracking_uri(uri)
        try:
            with mlflow.start_run():
                infos = [
                    mlflow.sklearn.log_model(m, name=m.family, skops_trusted_types=SKOPS_TRUSTED_TYPES) for m in models
                ]
            loaded = [mlflow.sklearn.load_model(info.model_uri) for info in infos]
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    stored = {p.name for p in Path(mlflow.artifacts.download_artifacts(infos[0].model_uri, tracking_uri=uri)).iterdir()}
    assert "model.skops" in stored and not any(name.endswith((".pkl", ".pickle")) for name in stored), stored
    for original, back in zip(models, loaded, strict=True):
        assert isinstance(back, DigitClassifier) and back.family == original.family
        np.testing.assert_array_equal(back.predict_proba(split.test.images), original.predict_proba(split.test.images))
        np.testing.assert_array_equal(back.index_images_, original.index_images_)


# --- the image table -----------------------------------------------------------------------------


def test_digit_images_lands_in_the_warehouse_and_reloads_replace(
    tmp_path: Path, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    warehouse = WarehouseResource(url=warehouse_url)  # SQLite and the real PostgreSQL
    for _ in range(2):
        result = dg.materialize(
            [digit_images],
            resources={"digits_source": BundledDigitsSource(), "warehouse": warehouse},
            instance=instance,
        )
        metadata = result.asset_materializations_for_node("digit_images")[0].metadata
        assert metadata["dagster/row_count"].value == 1797 and metadata["bundled_sample"].value is True
    source, stored = read_digit_images(warehouse)
    bunch = load_digits()
    assert source == "sklearn-load-digits" and len(stored) == 1797
    np.testing.assert_array_equal(stored.images, bunch.data)
    np.testing.assert_array_equal(stored.labels, bunch.target)

    images, labels = _good(5)
    np.savez(tmp_path / "mine.npz", images=images, labels=labels)
    dg.materialize(
        [digit_images],
        resources={"digits_source": NpzDigitsSource(path=str(tmp_path / "mine.npz")), "warehouse": warehouse},
        instance=instance,
    )
    # The table holds one dataset: the user's replaced the bundled one.
    assert len(read_digit_images(warehouse)[1]) == 50


def test_a_bad_file_fails_the_run_and_keeps_the_table(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path / 'w.db'}")
    dg.materialize(
        [digit_images], resources={"digits_source": BundledDigitsSource(), "warehouse": warehouse}, instance=instance
    )
    images, labels = _good()
    np.savez(tmp_path / "bad.npz", images=images * 3, labels=labels)
    result = dg.materialize(
        [digit_images],
        resources={"digits_source": NpzDigitsSource(path=str(tmp_path / "bad.npz")), "warehouse": warehouse},
        instance=instance,
        raise_on_error=False,
    )
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "bad.npz: pixels must be in 0..16" in failure.step_failure_data.error.message
    assert len(read_digit_images(warehouse)[1]) == 1797


# --- PNG -> the dataset's 8x8 form ---------------------------------------------------------------


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("scale", [1, 3, 25])
def test_every_scaled_up_inverted_dataset_image_comes_back_as_itself(scale: int) -> None:
    """Issue 11: a PNG made by scaling up a dataset image and inverting it is the array, for all 1,797."""
    images = load_digits().images
    back = np.stack([png_to_digit(digit_to_png(image, scale)) for image in images])
    mismatched = np.flatnonzero((back != images).any(axis=(1, 2)))
    assert mismatched.size == 0, f"{mismatched.size} of {len(images)} differ, e.g. image {mismatched[:5]}"


def _on_a_canvas(image: np.ndarray, scale: int, margins: tuple[int, int, int, int]) -> bytes:
    """The dataset image scaled up, with white margins (top, right, bottom, left): no longer an 8x8 grid."""
    gray = np.round(255 - image * 255 / 16).astype("uint8")
    top, right, bottom, left = margins
    return _png(
        np.pad(
            np.kron(gray, np.ones((scale, scale), dtype="uint8")), ((top, bottom), (left, right)), constant_values=255
        )
    )


def test_a_free_hand_drawing_is_cropped_and_centred(digits: LabelledDigits, svc: DigitClassifier) -> None:
    """Off the block grid, the ink is cropped and re-centred: exact for digits framed as the dataset mostly
    frames them (ink on rows 0 and 7, as in every image; spare columns split evenly, an odd one on the
    left), shifted by a column for the others, which still get the same answer nearly always."""
    images = split_digits(digits).test.images.reshape(-1, 8, 8)
    back = np.stack([png_to_digit(_on_a_canvas(image, 10, (7, 4, 21, 13))) for image in images])
    rows, cols = (images > 0).any(axis=2), (images > 0).any(axis=1)
    width, first = cols.sum(axis=1), cols.argmax(axis=1)
    framed = rows[:, 0] & rows[:, 7] & (first == (8 - width + 1) // 2)
    assert framed.mean() > 0.85
    np.testing.assert_array_equal(back[framed], images[framed])
    same = np.mean(svc.predict(back.reshape(-1, 64)) == svc.predict(images.reshape(-1, 64)))
    assert same >= 0.98, same


def test_colour_transparency_and_a_grey_page_are_handled() -> None:
    image = load_digits().images[0]
    gray = np.round(255 - image * 255 / 16).astype("uint8")
    big = np.kron(gray, np.ones((10, 10), dtype="uint8"))
    rgba = np.zeros((*big.shape, 4), dtype="uint8")
    rgba[..., 3] = 255 - big  # black ink, transparent where there is none
    np.testing.assert_array_equal(png_to_digit(_png(rgba, "RGBA")), image)
    rgb = np.stack([big] * 3, axis=-1)
    np.testing.assert_array_equal(png_to_digit(_png(rgb, "RGB")), image)
    grey_page = np.round(big.astype(float) * 200 / 255).astype("uint8")  # the paper is grey (200), the ink black
    np.testing.assert_array_equal(png_to_digit(_png(grey_page)), image)


def _bomb_header(width: int, height: int) -> bytes:
    """A tiny PNG declaring a huge image (valid signature and IHDR, almost no data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a not a png", "not a PNG image"),
        (b"", "not a PNG image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated before its IHDR"),
        (_bomb_header(100_000, 100_000), "declares 100000x100000 pixels, more than the limit"),
        (_bomb_header(1, 1), "1x1 pixels; a digit needs at least 8x8"),
        (_png(np.full((40, 40), 255, dtype="uint8")), "blank"),
        (_png(np.full((40, 40), 90, dtype="uint8")), "blank"),
        (_png(np.full((40, 40), 255, dtype="uint8"))[:60], "could not be decoded"),
    ],
    ids=["gif", "empty", "truncated", "bomb", "one-pixel", "white-page", "grey-page", "cut-short"],
)
def test_bad_pngs_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        png_to_digit(data)


def test_the_size_is_read_from_the_header_before_decoding() -> None:
    assert png_size(_bomb_header(123, 45)) == (123, 45)
    with pytest.raises(ImageError, match="blank"):
        to_dataset_form(np.zeros((20, 20)))


def test_the_source_follows_digits_data_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mlops_assets.digits.source import build_digits_source
    from mlops_assets.settings import load_pipeline_settings

    monkeypatch.delenv("DIGITS_DATA_PATH", raising=False)
    assert isinstance(build_digits_source(load_pipeline_settings()), BundledDigitsSource)
    images, labels = _good()
    np.savez(tmp_path / "mine.npz", images=images, labels=labels)
    monkeypatch.setenv("DIGITS_DATA_PATH", str(tmp_path / "mine.npz"))
    source = build_digits_source(load_pipeline_settings())
    assert isinstance(source, NpzDigitsSource)
    with dg.build_resources({"digits_source": source}) as resources:  # dg.EnvVar resolves when a run starts
        assert len(resources.digits_source.load()) == 30
