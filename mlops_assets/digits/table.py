"""The warehouse table of digit images: one row per image, its label and 64 pixel columns.

Its own SQLAlchemy `MetaData` on the shared warehouse engine (the table is this pipeline's
alone). Plain float columns, not a blob: the rows are readable with SQL, and nothing is pickled.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from mlops_assets.digits.dataset import PIXELS, LabelledDigits
from mlops_assets.resources.warehouse import WarehouseResource

TABLE_NAME = "digit_images"
PIXEL_COLUMNS = tuple(f"p{index:02d}" for index in range(PIXELS))

metadata = sa.MetaData()

digit_images_table = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("image_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    *[sa.Column(name, sa.Float, nullable=False) for name in PIXEL_COLUMNS],
)


def replace_digit_images(warehouse: WarehouseResource, source: str, digits: LabelledDigits) -> int:
    """Atomically replace the table's images with `digits` (the table holds one dataset at a time)."""
    engine = warehouse.engine
    metadata.create_all(engine)
    rows = [
        {
            "image_id": index,
            "source": source,
            "label": int(label),
            **dict(zip(PIXEL_COLUMNS, map(float, image), strict=True)),
        }
        for index, (image, label) in enumerate(zip(digits.images, digits.labels, strict=True))
    ]
    with engine.begin() as connection:
        connection.execute(sa.delete(digit_images_table))
        connection.execute(sa.insert(digit_images_table), rows)
    return len(rows)


def read_digit_images(warehouse: WarehouseResource) -> tuple[str, LabelledDigits]:
    """(source, images in image_id order): the same table always gives the same arrays."""
    engine = warehouse.engine
    metadata.create_all(engine)
    table = digit_images_table
    query = sa.select(table.c.source, table.c.label, *[table.c[name] for name in PIXEL_COLUMNS]).order_by(
        table.c.image_id
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    if not rows:
        raise LookupError(f"the warehouse table {TABLE_NAME} is empty: materialize digit_images first")
    values = np.asarray([row[1:] for row in rows], dtype="float64")
    sources = {row[0] for row in rows}
    return ", ".join(sorted(sources)), LabelledDigits(values[:, 1:], values[:, 0].astype("int64"))
