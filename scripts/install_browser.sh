#!/usr/bin/env bash
# Install Debian's chromium for the web page test (tests/serve/test_web_page.py), which drives it
# with Playwright. A no-op when /usr/bin/chromium exists; never downloads Playwright's own browsers.
# Exits non-zero, saying why, when it cannot install it: `make test` then stops (in strict mode,
# CI=true or STRICT=1, the web page test would fail without chromium anyway).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

fail() {
    echo "install_browser.sh: cannot install chromium: $*" >&2
    echo "install_browser.sh: install Debian's chromium so that $CHROMIUM exists" \
        "(apt-get install chromium), then run make test again" >&2
    exit 1
}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "$CHROMIUM is missing and apt-get is not available (not a Debian-based system?)"
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        fail "$CHROMIUM is missing, this is not root, and sudo is not available"
    fi
    SUDO="sudo"
fi
echo "install_browser.sh: installing chromium (for the web page test)"
$SUDO apt-get update || fail "apt-get update failed"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium \
    || fail "apt-get install chromium failed"
if [ ! -x "$CHROMIUM" ]; then
    fail "apt-get installed the chromium package but $CHROMIUM is not there"
fi
echo "install_browser.sh: installed $CHROMIUM"
