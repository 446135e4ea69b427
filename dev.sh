#!/usr/bin/env bash
# The project's one entry point for people and CI.
#   ./dev.sh main     set up .venv, then run the main job on the shipped fixtures
#   ./dev.sh test     set up .venv, then run the whole test suite
#   ./dev.sh bench    set up .venv, then regenerate BENCHMARKS.md
#   ./dev.sh fixtures set up .venv, then regenerate fixtures/ with the real tools
# Each command creates or refreshes .venv itself: a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "dev.sh: creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when the dependency spec changed (a stamp keyed on pyproject.toml).
    local stamp="$VENV/.etm-stamp" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "dev.sh: installing etm-compat[dev] into $VENV" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        # torch is pinned to 2.13.0 (the CPU wheel on disk); executorch 1.5.1 works with it.
        "$VENV/bin/python" -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
        "$VENV/bin/python" -c "import etm_compat, etm_compat.adapters" || { echo "dev.sh: install failed" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}

# The HTML report test opens the report in a real headless browser (Debian's chromium).
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: installing chromium for the HTML report test" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
            || echo "dev.sh: chromium could not be installed; the browser test will be skipped" >&2
    else
        echo "dev.sh: chromium not found and cannot be installed here; the browser test will be skipped" >&2
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    main)
        ensure_venv
        # Upgrade every legacy deployment shipped in fixtures/legacy into a fresh folder, then show
        # the report (the summary table here; Markdown and HTML copies beside the archives).
        out=out/legacy-etm
        rm -rf "$out"
        "$VENV/bin/etm-compat" upgrade fixtures/legacy --out "$out" \
            --report "$out/report.html" --report "$out/report.md" "$@"
        echo
        cat "$out/report.md"
        echo
        echo "dev.sh: archives and reports in $out/ (report.html, report.md)"
        ;;
    test)
        ensure_venv
        ensure_chromium
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        ensure_venv
        exec "$VENV/bin/python" benchmarks/run.py "$@"
        ;;
    fixtures)
        ensure_venv
        exec "$VENV/bin/python" fixtures/make_fixtures.py "$@"
        ;;
    *)
        echo "usage: ./dev.sh main|test|bench|fixtures [args...]" >&2
        exit 2
        ;;
esac
