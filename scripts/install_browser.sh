#!/usr/bin/env bash
# Install Debian's chromium for the web page test (tests/serve/test_web_page.py), which drives it
# with Playwright. A no-op when /usr/bin/chromium exists; never downloads Playwright's own browsers.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: /usr/bin/chromium is missing and apt-get is not available;" \
        "install chromium yourself (the web page test is skipped without it)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install_browser.sh: installing chromium (for the web page test)"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
