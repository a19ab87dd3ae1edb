#!/usr/bin/env bash
# CI set-up for tests/test_space_browser.py: Debian's Chromium and chromedriver (apt-get), and the selenium driver
# package (pip, into the active Python environment). Idempotent (installs only what is missing) and quiet.
# apt-get needs root: run as root, or with sudo available.
set -euo pipefail

PYTHON="${PYTHON:-python}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if ! "$PYTHON" -c "import selenium" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "selenium>=4.20"
fi

# print what the browser test will use (one line each)
chromium --version 2>/dev/null | grep -i chromium || true
chromedriver --version 2>/dev/null || true
