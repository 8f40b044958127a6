#!/usr/bin/env bash
# Debian's headless Chromium and its driver for tests/test_report_html.py (~1 min with apt-get update on
# a fresh machine), only when missing; without root it says so and the browser test is skipped.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "note: Chromium not installed (needs root and apt-get); the report.html browser test will be skipped" >&2
fi
