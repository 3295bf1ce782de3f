"""The digits data contract: validation with clear errors, and the seeded stratified split (pure).

An image is 8x8 pixels of ink in 0..16 (the layout of scikit-learn's `load_digits`: the UCI
optdigits counts of inked pixels per 4x4 block, so 16 is fully dark), stored flat as 64 numbers
row by row. Labels are the digits 0..9.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SIDE = 8
PIXELS = SIDE * SIDE
MAX_INK = 16.0
CLASSES = tuple(range(10))
#: A stratified split needs at least two images of every class (one each side).
MIN_PER_CLASS = 2
TEST_FRACTION = 0.25
SPLIT_SEED = 42
#: The search's validation set is carved from the training part with another seed.
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 43


class DigitsDataError(ValueError):
    """The images or labels cannot be digits data; the message says which rule and where."""


@dataclass(frozen=True)
class LabelledDigits:
    """Validated images, flat (n, 64) float64 in 0..16, and their int64 labels 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[int, int]:
        return {digit: int(np.sum(self.labels == digit)) for digit in CLASSES}


@dataclass(frozen=True)
class DigitsSplit:
    train: LabelledDigits
    test: LabelledDigits


def validate_digits(images: object, labels: object, origin: str = "data") -> LabelledDigits:
    """Check shapes, finiteness, the 0..16 range and labels 0..9 with >= 2 images per class."""
    try:
        pixels = np.asarray(images, dtype="float64")
    except (TypeError, ValueError) as error:
        raise DigitsDataError(f"{origin}: images are not numeric: {error}") from None
    if pixels.ndim == 3 and pixels.shape[1:] == (SIDE, SIDE):
        pixels = pixels.reshape(len(pixels), PIXELS)
    if pixels.ndim != 2 or pixels.shape[1] != PIXELS:
        raise DigitsDataError(f"{origin}: images must have shape (n, 8, 8) or (n, 64), got {pixels.shape}")
    if len(pixels) == 0:
        raise DigitsDataError(f"{origin}: no images")
    bad_rows = np.flatnonzero(~np.isfinite(pixels).all(axis=1))
    if bad_rows.size:
        raise DigitsDataError(
            f"{origin}: {bad_rows.size} images contain NaN or infinite pixels, e.g. image {int(bad_rows[0])}"
        )
    outside = np.flatnonzero(((pixels < 0) | (pixels > MAX_INK)).any(axis=1))
    if outside.size:
        first = int(outside[0])
        raise DigitsDataError(
            f"{origin}: pixels must be in 0..16 (ink, 16 = fully dark); {outside.size} images are not, "
            f"e.g. image {first} has values {pixels[first].min():g}..{pixels[first].max():g}"
        )
    raw_labels = np.asarray(labels)
    if raw_labels.ndim != 1 or len(raw_labels) != len(pixels):
        raise DigitsDataError(f"{origin}: labels must be one per image ({len(pixels)}), got shape {raw_labels.shape}")
    try:
        as_float = raw_labels.astype("float64")
    except (TypeError, ValueError):
        raise DigitsDataError(f"{origin}: labels must be the integers 0..9, got dtype {raw_labels.dtype}") from None
    wrong = np.flatnonzero(~np.isin(as_float, CLASSES))
    if wrong.size:
        raise DigitsDataError(
            f"{origin}: labels must be the integers 0..9; {wrong.size} are not, e.g. label "
            f"{raw_labels[wrong[0]].item()!r} of image {int(wrong[0])}"
        )
    digits = LabelledDigits(pixels, as_float.astype("int64"))
    scarce = {digit: count for digit, count in digits.class_counts().items() if count < MIN_PER_CLASS}
    if scarce:
        raise DigitsDataError(f"{origin}: every digit needs at least {MIN_PER_CLASS} images; too few of {scarce}")
    return digits


def read_npz(path: Path) -> LabelledDigits:
    """A user's `.npz` with arrays `images` ((n, 8, 8) or (n, 64)) and `labels` (n,), validated."""
    if not path.is_file():
        raise DigitsDataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ("images", "labels") if name not in archive.files]
            if missing:
                raise DigitsDataError(
                    f"{path}: missing arrays {missing} (found {sorted(archive.files)}; expected 'images' and 'labels')"
                )
            images, labels = archive["images"], archive["labels"]
    except DigitsDataError:
        raise
    except (OSError, ValueError) as error:  # not a zip, truncated, object arrays (pickles refused)
        raise DigitsDataError(f"{path}: not a readable .npz of numeric arrays: {error}") from None
    return validate_digits(images, labels, origin=str(path))


def split_digits(digits: LabelledDigits, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> DigitsSplit:
    """Stratified, seeded: the same table always gives the same holdout (champion and challenger)."""
    order = np.arange(len(digits))
    try:
        train_idx, test_idx = train_test_split(
            order, test_size=test_fraction, stratify=digits.labels, random_state=seed
        )
    except ValueError as error:  # too few images for every class to appear on both sides
        raise DigitsDataError(
            f"{len(digits)} images are too few for a stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split "
            f"with every digit on both sides: {error}"
        ) from None
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return DigitsSplit(
        LabelledDigits(digits.images[train_idx], digits.labels[train_idx]),
        LabelledDigits(digits.images[test_idx], digits.labels[test_idx]),
    )


def validation_split(train: LabelledDigits) -> DigitsSplit:
    """The search's train/validation cut, from the training part only (the holdout stays unseen)."""
    return split_digits(train, VALIDATION_FRACTION, VALIDATION_SEED)
