# syntax=docker/dockerfile:1
# The project's one image: the Dagster code server and its run pods, the Dagster webserver and
# daemon, the MLflow server, the Litestar prediction service and (optionally) the Ray nodes.
# Build:  docker build -t <registry>/mlops-assets:<version> .
# The Helm chart (helm/mlops-assets) runs it read-only, as uid 10001, with /tmp and /home/app
# mounted writable.

# Both stages use the same base image, pinned by tag (add "@sha256:<digest>" to pin by digest
# as well); keep the two FROM lines equal: the runtime stage runs the build stage's venv.

# ---------------------------------------------------------------------------- build stage
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for dependencies without a wheel for this platform; it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mlops_assets ./mlops_assets
COPY serving ./serving

# The project (runtime dependencies only, no test extras) plus what the Kubernetes
# deployment needs on top, resolved together in one step:
#   dagster-k8s   the K8sRunLauncher; released in lock-step with dagster 1.13.27
#   boto3         MLflow's S3 artifact store (mlflow.artifacts.type=s3)
#   ray[default,client]  `ray start` on KubeRay nodes (dashboard agent, health endpoints) and
#                 the ray:// client of the runs; same Ray version as ray[tune] of the project
RUN pip install . \
      "dagster-k8s==0.29.27" \
      "boto3>=1.34,<2" \
      "ray[default,client]" \
 && pip check

# -------------------------------------------------------------------------- runtime stage
FROM python:3.11.13-slim-bookworm AS runtime

# tini: PID 1 that forwards signals and reaps zombies (Ray and Dagster start subprocesses).
# wget: KubeRay's readiness/liveness probes call it in Ray containers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini wget \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
      --shell /usr/sbin/nologin app \
 && mkdir -p /opt/dagster/dagster_home /opt/dagster/app \
 && chown -R app:app /opt/dagster

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /opt/dagster/app
USER 10001:10001

# Dagster webserver, code server (gRPC), MLflow, prediction service.
EXPOSE 3000 4000 5000 8000

# Several processes share this image; Kubernetes probes check each one (see the chart).
HEALTHCHECK NONE

ENTRYPOINT ["tini", "--"]
CMD ["mlops-assets", "--help"]
