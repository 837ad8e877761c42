#!/usr/bin/env bash
# Installs a headless Chromium for the report test (tests/eval.rs opens report.html with
# `--dump-dom` and checks its SVG plots). Debian's `chromium-headless-shell` is the small
# variant: 411 MB installed on Debian 12 (apt's figure: 115 new packages on this project's
# slim image). Nothing happens when one is already on PATH.
# DPOIMG_INSTALL_CHROMIUM=0 skips the install (the test then skips loudly, except under CI=1,
# where it fails).
set -euo pipefail
for name in chromium-headless-shell chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then
        exit 0
    fi
done
[ "${DPOIMG_INSTALL_CHROMIUM:-1}" = 1 ] || exit 0
if ! command -v apt-get >/dev/null; then
    echo "install-chromium: no apt-get; install a headless Chromium and set DPOIMG_CHROMIUM" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
log="$(mktemp)"
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium-headless-shell; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
command -v chromium-headless-shell
