#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to code running in a microVM:
# installs the packages, builds Hearth and the guest image, then runs a demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
hearth=target/release/hearth
echo "+ hearth doctor"
$hearth doctor
echo "+ hearth sandbox run -- python3 -c 'print(6*7)'"
$hearth sandbox run -- python3 -c 'print(6*7)'
echo "+ echo hello | hearth sandbox run --memory 256M -- sh -c 'cat; uname -r; nproc'"
echo hello | $hearth sandbox run --memory 256M -- sh -c 'cat; uname -r; nproc'
