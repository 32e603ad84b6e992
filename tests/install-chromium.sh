#!/usr/bin/env bash
# Chromium for the report tests (tests/test_report_e2e.py opens the HTML report in headless
# Chromium and screenshots it). Does nothing when a Chromium is already there; installs Debian's
# `chromium` package when run as root on a machine with apt-get; otherwise says how to get one
# and exits 0, and the browser tests skip saying why.
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "install-chromium: $(command -v "$name") is there"
        exit 0
    fi
done
if [ -n "${KVSWEEP_CHROMIUM:-}" ] && [ -x "$KVSWEEP_CHROMIUM" ]; then
    echo "install-chromium: KVSWEEP_CHROMIUM=$KVSWEEP_CHROMIUM is there"
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: installing Debian's chromium package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    command -v chromium
    exit 0
fi
cat >&2 <<'MSG'
install-chromium: no Chromium found, and this user cannot install one (not root, or no apt-get).
  Debian/Ubuntu:  sudo apt-get install chromium     (Ubuntu: chromium-browser, or the snap)
  Fedora:         sudo dnf install chromium
  macOS:          brew install --cask chromium
  or point KVSWEEP_CHROMIUM at any Chromium or Chrome binary.
The tests that open the HTML report in a browser will skip until then.
MSG
exit 0
