"""`digit_classifier` on `/predict/digits`: a handwritten digit -> the digit, its probabilities and
the three most similar training images (the "why this answer" of the old system).

The registered model is a `DigitClassifier` (`mlops_assets.digits.families`, skops-saved sklearn
flavour) that carries its neighbour index; it is loaded once per version. A request is either the
dataset's layout (`{"image": [[8 x 8 numbers 0..16]]}`, ink high) or a PNG of a dark digit on a
light background, any size: as base64 in JSON (`{"png": "..."}`) or, once the app routes non-JSON
bodies to `decode_body`, as a raw `Content-Type: image/png` body. A PNG is turned into the 8x8
form by `mlops_assets.digits.png` (size checked from its header before decoding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from mlops_assets.constants import DIGITS_MODEL_NAME
from mlops_assets.digits.dataset import CLASSES, MAX_INK, PIXELS, SIDE
from mlops_assets.digits.png import ImageError, png_to_digit
from serving.errors import InvalidInput
from serving.models import ModelModule, ModelRef

NAME = DIGITS_MODEL_NAME
NEAREST = 3
log = logging.getLogger(__name__)

Pixel = Annotated[float, msgspec.Meta(ge=0, le=MAX_INK)]
Row = Annotated[list[Pixel], msgspec.Meta(min_length=SIDE, max_length=SIDE)]
Image = Annotated[
    list[Row],
    msgspec.Meta(
        min_length=SIDE,
        max_length=SIDE,
        description=(
            "8 rows of 8 pixels, ink 0 (none) .. 16 (fully dark), row by row from the top: "
            "the layout of scikit-learn's load_digits."
        ),
    ),
]


class DigitsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `image` (the dataset's 8x8 layout) or `png` (base64 PNG, dark digit on light background)."""

    image: Image | None = None
    png: Annotated[
        bytes | None,
        msgspec.Meta(description="Base64 PNG of a dark digit on a light background, any size up to 4 megapixels."),
    ] = None


class Neighbour(msgspec.Struct):
    label: int
    #: Euclidean distance in the model's embedding (NCA space, or pixels / 16).
    distance: float
    image: list[list[float]]


class DigitsResponse(msgspec.Struct):
    digit: Annotated[int, msgspec.Meta(description="The predicted digit (the largest probability).")]
    probabilities: Annotated[list[float], msgspec.Meta(description="Probability of each digit 0..9.")]
    nearest: Annotated[list[Neighbour], msgspec.Meta(description="The three closest training images, closest first.")]
    model: ModelRef


@dataclass(frozen=True)
class DigitModel:
    classifier: Any  # mlops_assets.digits.families.DigitClassifier


@dataclass(frozen=True)
class DigitsOutput:
    probabilities: np.ndarray  # (10,)
    neighbours: np.ndarray  # (k,) indices into the index
    distances: np.ndarray  # (k,)
    index_labels: np.ndarray
    index_images: np.ndarray


def load(model_dir: str) -> DigitModel:
    """Load a version's files and check it is a digit classifier with its neighbour index, before serving it."""
    import mlflow.sklearn

    from mlops_assets.digits.families import DigitClassifier

    classifier = mlflow.sklearn.load_model(model_dir)
    if not isinstance(classifier, DigitClassifier):
        raise ValueError(f"{model_dir}: expected a DigitClassifier, got {type(classifier).__name__}")
    images = np.asarray(getattr(classifier, "index_images_", np.empty((0, 0))))
    labels = np.asarray(getattr(classifier, "index_labels_", np.empty(0)))
    if images.ndim != 2 or images.shape[1] != PIXELS or len(images) != len(labels) or len(labels) < NEAREST:
        raise ValueError(
            f"{model_dir}: the neighbour index is missing or malformed (images {images.shape}, labels {labels.shape})"
        )
    if [int(c) for c in classifier.classes_] != list(CLASSES):
        raise ValueError(f"{model_dir}: classes are {list(classifier.classes_)}, expected the digits 0..9")
    probe = images[:NEAREST]
    probabilities = classifier.predict_proba(probe)
    if probabilities.shape != (NEAREST, len(CLASSES)) or not np.all(np.isfinite(probabilities)):
        raise ValueError(f"{model_dir}: predict_proba gave {probabilities.shape} or non-finite values on probe images")
    log.info(
        "%s: %s, family %s, index of %d images", model_dir, type(classifier).__name__, classifier.family, len(labels)
    )
    return DigitModel(classifier)


def image_from_png(data: bytes, field: str = "$.png") -> np.ndarray:
    """PNG bytes -> (1, 64) in the dataset's layout; a bad image is a 422 naming the problem."""
    try:
        return png_to_digit(data).reshape(1, PIXELS)
    except ImageError as error:
        raise InvalidInput(str(error), field) from None


def build_input(model: DigitModel, body: DigitsRequest) -> np.ndarray:
    if (body.image is None) == (body.png is None):
        raise InvalidInput("send exactly one of `image` (8x8 numbers 0..16) or `png` (base64 PNG)", "$")
    if body.png is not None:
        return image_from_png(body.png)
    return np.asarray(body.image, dtype="float64").reshape(1, PIXELS)


def decode_body(body: bytes, content_type: str) -> DigitsRequest:
    """A non-JSON request body -> the request (for the app's hook): only `image/png` is accepted."""
    from litestar.exceptions import HTTPException

    media = content_type.split(";", 1)[0].strip().lower()
    if media != "image/png":
        raise HTTPException(
            status_code=415, detail=f"send JSON or an image/png body, not {media or 'no content type'!r}"
        )
    if not body:
        raise InvalidInput("the PNG body is empty", "$")
    return DigitsRequest(png=body)


def predict(model: DigitModel, pixels: np.ndarray) -> DigitsOutput:
    classifier = model.classifier
    probabilities, order, distances = classifier.explain(pixels, NEAREST)
    return DigitsOutput(probabilities[0], order[0], distances[0], classifier.index_labels_, classifier.index_images_)


def shape_response(output: DigitsOutput, model: ModelRef) -> DigitsResponse:
    if not np.all(np.isfinite(output.probabilities)):
        raise InvalidInput("the model produced no finite probabilities for this image")
    nearest = [
        Neighbour(
            label=int(output.index_labels[i]),
            distance=float(d),
            image=np.asarray(output.index_images[i], dtype="float64").reshape(SIDE, SIDE).tolist(),
        )
        for i, d in zip(output.neighbours, output.distances, strict=True)
    ]
    return DigitsResponse(
        digit=int(np.argmax(output.probabilities)),
        probabilities=[float(p) for p in output.probabilities],
        nearest=nearest,
        model=model,
    )


#: Image 0 of load_digits (a zero), as the docs' example.
_EXAMPLE_ZERO = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]

MODEL: ModelModule[DigitModel, DigitsRequest, np.ndarray, DigitsOutput] = ModelModule(
    name=NAME,
    request_type=DigitsRequest,
    response_type=DigitsResponse,
    load=load,
    build_input=build_input,
    predict=predict,
    shape_response=shape_response,
    description=(
        'Classify a handwritten digit: `{"image": [[8x8 numbers 0..16]]}` in the layout of scikit-learn\'s '
        'load_digits (ink high), or `{"png": "<base64>"}` of a dark digit on a light background of any size. '
        "Answers the digit, the ten probabilities and the three nearest training images."
    ),
    route="digits",
    examples={"a zero from the dataset": {"image": _EXAMPLE_ZERO}},
    decode_body=decode_body,
    max_batch=1,  # `predict` explains one image (its probabilities and nearest neighbours)
)
