"""Compose SQLAlchemy database URLs from their parts at container start, then exec a command.

    python3 with_db_urls.py COMMAND [ARG...]

The chart keeps database passwords in Kubernetes Secrets and hands them to the container only
as environment variables (`secretKeyRef`). The URLs that embed them are composed here, in the
container's own process, so a password never lands in a ConfigMap, a pod spec or `helm get`.

For each (URL variable, prefix) pair below: when the URL variable is unset or empty and
`<PREFIX>_HOST` is set, export

    <URL variable> = postgresql+psycopg2://<USER>:<PASSWORD>@<HOST>:<PORT>/<NAME>[?<PARAMS>]

from `<PREFIX>_USER`, `<PREFIX>_PASSWORD`, `<PREFIX>_HOST`, `<PREFIX>_PORT` (default 5432),
`<PREFIX>_NAME` and `<PREFIX>_PARAMS` (a query string such as `sslmode=require`), user and
password percent-encoded so any character is safe. A URL variable that is already set (e.g.
from a Secret of its own) is left alone. Then the process is replaced by COMMAND.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from urllib.parse import quote

#: (URL variable, prefix of its parts).
URLS: tuple[tuple[str, str], ...] = (
    ("WAREHOUSE_URL", "WAREHOUSE_DB"),
    ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_DB"),
)


def compose(env: Mapping[str, str], prefix: str) -> str:
    """The postgresql+psycopg2 URL of the parts `<prefix>_*` in `env`."""
    host = env[f"{prefix}_HOST"]
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    user = quote(env.get(f"{prefix}_USER", ""), safe="")
    password = env.get(f"{prefix}_PASSWORD", "")
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    port = env.get(f"{prefix}_PORT") or "5432"
    name = quote(env.get(f"{prefix}_NAME", ""), safe="")
    url = f"postgresql+psycopg2://{credentials}@{host}:{port}/{name}"
    params = env.get(f"{prefix}_PARAMS", "")
    return f"{url}?{params}" if params else url


def fill(env: MutableMapping[str, str]) -> list[str]:
    """Set every composable, unset URL variable in `env`; the names that were set."""
    done = []
    for variable, prefix in URLS:
        if not env.get(variable) and env.get(f"{prefix}_HOST"):
            env[variable] = compose(env, prefix)
            done.append(variable)
    return done


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    fill(os.environ)
    os.execvp(argv[0], list(argv))
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
