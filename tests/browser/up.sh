#!/usr/bin/env bash
# Install headless Chromium for the report's browser check (tests/browser, used by
# tests/test_report_browser.py and the demo's report test): Debian's `chromium` package.
#
# Usage (as root): bash tests/browser/up.sh   -- idempotent: installs only when missing.
# CI installs it up front with the same apt line (.ci/run); the tests call this script when
# chromium is missing and they run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { printf 'browser/up: %s\n' "$*" >&2; }

if command -v chromium >/dev/null; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	log "chromium is missing and installing it needs root: apt-get install chromium"
	exit 1
fi
log "installing chromium (Debian package, headless use)"
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null || {
	log "apt-get installed chromium but it is not on PATH"
	exit 1
}
