"""Loading policy records: row validation with line numbers, and the synthetic demo sample (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_assets.insurance.families import CATEGORIES, FEATURES, RANGES, TARGET

COLUMNS = (*FEATURES, TARGET)
SYNTHETIC_SOURCE = "synthetic-sample"


class PolicySchemaError(ValueError):
    """The file cannot be policies at all (missing columns): nothing is loaded."""


@dataclass(frozen=True)
class RejectedRow:
    line: int  # as an editor shows it: the header is line 1
    problems: list[str]


@dataclass(frozen=True)
class ValidatedPolicies:
    valid: pd.DataFrame  # COLUMNS plus `line`
    rejected: list[RejectedRow] = field(default_factory=list)


def read_policies_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PolicySchemaError(f"{path}: no such file")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in COLUMNS if column not in raw.columns]
    if missing:
        raise PolicySchemaError(f"{path}: missing columns {missing} (expected {list(COLUMNS)})")
    return raw


def validate_policies(raw: pd.DataFrame) -> ValidatedPolicies:
    """Keep rows that pass every rule; report the others with their line numbers and reasons."""
    frame = pd.DataFrame({"line": np.arange(len(raw)) + 2})
    problems: list[list[str]] = [[] for _ in range(len(raw))]
    for column in ("age", "bmi", "children", TARGET):
        text = raw[column].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        for index in np.flatnonzero(values.isna().to_numpy()):
            problems[index].append(f"{column}={raw[column].iloc[index]!r} is not a number")
        frame[column] = values
    for column, (low, high) in RANGES.items():
        bad = frame[column].notna() & ((frame[column] < low) | (frame[column] > high))
        for index in np.flatnonzero(bad.to_numpy()):
            problems[index].append(f"{column}={frame[column].iloc[index]:g} is outside {low:g}..{high:g}")
    whole_children = frame["children"].notna() & (frame["children"] % 1 != 0)
    for index in np.flatnonzero(whole_children.to_numpy()):
        problems[index].append(f"children={frame['children'].iloc[index]:g} is not a whole number")
    not_positive = frame[TARGET].notna() & (frame[TARGET] <= 0)
    for index in np.flatnonzero(not_positive.to_numpy()):
        problems[index].append(f"charges={frame[TARGET].iloc[index]:g} is not positive")
    for column, words in CATEGORIES.items():
        text = raw[column].astype(str).str.strip().str.lower()
        bad = ~text.isin(words)
        for index in np.flatnonzero(bad.to_numpy()):
            problems[index].append(f"{column}={raw[column].iloc[index]!r} is not one of {', '.join(words)}")
        frame[column] = text
    rejected = [RejectedRow(int(frame["line"].iloc[i]), p) for i, p in enumerate(problems) if p]
    keep = np.array([not p for p in problems], dtype=bool)
    valid = frame[keep].reset_index(drop=True)
    valid["age"] = valid["age"].astype("int64")
    valid["children"] = valid["children"].astype("int64")
    return ValidatedPolicies(valid[["line", *COLUMNS]], rejected)


def synthetic_policies(rows: int = 1338, seed: int = 7) -> pd.DataFrame:
    """A clearly synthetic table with the public dataset's schema and broad structure.

    The process (documented in README): age uniform 18-64; sex and region uniform; bmi normal
    (mean 30.7, sd 6.1) clipped to 16-53; children 0-5 with the public data's frequencies;
    20% smokers. Charges = 260*age + 350*children + 2,000 base, plus 13,000 for smokers and
    another 19,000 for obese smokers (bmi > 30), times lognormal noise (sigma 0.15), plus
    an occasional large non-smoker claim. No row of it describes a real person.
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 65, rows)
    bmi = np.clip(rng.normal(30.7, 6.1, rows), 16, 53).round(2)
    children = rng.choice(6, rows, p=[0.43, 0.24, 0.18, 0.12, 0.02, 0.01])
    smoker = rng.random(rows) < 0.2
    sex = rng.choice(CATEGORIES["sex"], rows)
    region = rng.choice(CATEGORIES["region"], rows)
    base = 2000 + 260 * age + 350 * children + smoker * (13000 + (bmi > 30) * 19000)
    charges = base * rng.lognormal(0.0, 0.15, rows) + (rng.random(rows) < 0.08) * rng.uniform(5000, 20000, rows)
    return pd.DataFrame(
        {
            "age": age.astype(str),
            "sex": sex,
            "bmi": bmi.astype(str),
            "children": children.astype(str),
            "smoker": np.where(smoker, "yes", "no"),
            "region": region,
            "charges": charges.round(2).astype(str),
        }
    )
