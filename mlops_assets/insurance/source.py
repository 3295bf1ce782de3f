"""Where policy records come from: the user's CSV, or a clearly labelled synthetic sample."""

from __future__ import annotations

import abc
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from mlops_assets.insurance.dataset import SYNTHETIC_SOURCE, read_policies_csv, synthetic_policies


class PolicySource(dg.ConfigurableResource, abc.ABC):
    """Raw policy rows as text (validation happens in the asset, with line numbers)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Stored with each row; re-loading the same name replaces its rows."""

    @property
    def is_synthetic(self) -> bool:
        return False

    @abc.abstractmethod
    def load(self) -> pd.DataFrame: ...


class CsvPolicySource(PolicySource):
    """`age,sex,bmi,children,smoker,region,charges`, e.g. the public medical-cost dataset."""

    path: str = Field(description="path of the CSV (INSURANCE_CSV_PATH)")

    @property
    def name(self) -> str:
        return str(Path(self.path).resolve())

    def load(self) -> pd.DataFrame:
        return read_policies_csv(Path(self.path))


class SyntheticPolicySource(PolicySource):
    """The demo default when no file is configured: generated, never real people."""

    rows: int = Field(default=1338, description="rows to generate")
    seed: int = Field(default=7, description="generator seed")

    @property
    def name(self) -> str:
        return SYNTHETIC_SOURCE

    @property
    def is_synthetic(self) -> bool:
        return True

    def load(self) -> pd.DataFrame:
        return synthetic_policies(self.rows, self.seed)
