"""Where digit images come from: scikit-learn's bundled set, or a user's `.npz` (DIGITS_DATA_PATH)."""

from __future__ import annotations

import abc
from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets.digits.dataset import LabelledDigits, read_npz, validate_digits
from mlops_assets.settings import PipelineSettings

BUNDLED_SOURCE = "sklearn-load-digits"


class DigitsSource(dg.ConfigurableResource, abc.ABC):
    """Validated labelled 8x8 images; `load` raises `DigitsDataError` with the broken rule."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Stored with each image in the warehouse."""

    @abc.abstractmethod
    def load(self) -> LabelledDigits: ...


class BundledDigitsSource(DigitsSource):
    """scikit-learn's `load_digits`: 1,797 UCI optdigits images, shipped with the package (no download)."""

    @property
    def name(self) -> str:
        return BUNDLED_SOURCE

    def load(self) -> LabelledDigits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return validate_digits(bunch.images, bunch.target, origin=BUNDLED_SOURCE)


class NpzDigitsSource(DigitsSource):
    """A `.npz` with `images` ((n, 8, 8) or (n, 64), ink 0..16) and `labels` (n,) of 0..9."""

    path: str = Field(description="path of the .npz (DIGITS_DATA_PATH)")

    @property
    def name(self) -> str:
        return str(Path(self.path).resolve())

    def load(self) -> LabelledDigits:
        return read_npz(Path(self.path))


def build_digits_source(settings: PipelineSettings) -> DigitsSource:
    """The user's file when DIGITS_DATA_PATH is set (an EnvVar when from the environment), else the bundled set."""
    if settings.digits_data_path:
        return NpzDigitsSource(path=settings.resource_value("digits_data_path"))
    return BundledDigitsSource()
