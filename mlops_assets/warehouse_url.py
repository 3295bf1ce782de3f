"""The warehouse's address, shared by the pipeline's resource and the service's prediction log.

Free of Dagster on purpose: serving workers import it without loading the pipeline.
"""

#: Embedded warehouse (local SQLite) when WAREHOUSE_URL is unset.
DEFAULT_WAREHOUSE_URL = "sqlite:///.mlops/warehouse.db"


def normalize_url(url: str) -> str:
    """Use psycopg2 for bare `postgresql://` URLs (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url
