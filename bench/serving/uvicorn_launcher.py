"""Run `serving.app:create_app` under uvicorn, for the server comparison in the benchmark only.

`python bench/serving/uvicorn_launcher.py PORT WORKERS LOOP SOCKET` with LOOP `uvloop|asyncio`
and SOCKET `stock` (uvicorn's own shared socket) or `tcp` (one created with IPPROTO_TCP, so
asyncio's transports set TCP_NODELAY on accepted connections).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile


def main() -> None:
    port, workers, loop, sock_kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-uvicorn-metrics-"))
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "serving.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        loop=loop,
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    if workers == 1:
        uvicorn.Server(config).run()
        return
    if sock_kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
        sock.set_inheritable(True)
    else:
        sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    main()
