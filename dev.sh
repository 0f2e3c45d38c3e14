#!/usr/bin/env bash
# Tidings, from a fresh machine:
#   ./dev.sh serve   set everything up, then run the server on its embedded defaults
#   ./dev.sh test    set everything up, then run lint, types and the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    # Install Debian packages that are missing; quiet when all are present.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_python() {
    if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        apt_install python3 python3-venv python3-pip
    fi
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        python3 -m venv .venv
    fi
    log "installing Python packages"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
}

setup_node() {
    # Node runs the centrifuge npm SDK in the conformance tests.
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    log "installing npm packages for the JavaScript SDK tests"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
}

setup_web() {
    # The chat app's browser bundle (src/tidings/web/dist, git-ignored, shipped in the
    # wheel): Node builds it with esbuild; serving it needs no Node.
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    local web=src/tidings/web
    if [ ! -f "$web/node_modules/.package-lock.json" ] \
        || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
        log "installing npm packages for the web app"
        (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    log "building the web app"
    (cd "$web" && npm run --silent build >/dev/null)
}

case "${1:-}" in
    serve)
        shift
        setup_python
        setup_web
        exec .venv/bin/tidings serve "$@"
        ;;
    test)
        shift
        setup_python
        setup_node
        setup_web
        # The web app's browser tests drive Debian's Chromium (Playwright downloads nothing).
        command -v chromium >/dev/null || apt_install chromium
        # The Redis broker's tests run a real redis-server (Debian package).
        command -v redis-server >/dev/null || apt_install redis-server
        # Account and room tests also run on a real PostgreSQL (Debian package).
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || apt_install postgresql
        # The multi-node tests put nginx (Debian package) in front of the nodes.
        command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
        log "ruff"
        .venv/bin/ruff check src tests examples bench
        .venv/bin/ruff format --check src tests examples bench
        log "mypy --strict"
        .venv/bin/mypy
        log "pytest"
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh serve [--host H] [--port P] [--config FILE] | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
