#!/usr/bin/env bash
# Install what mergelens needs to build, run and test (Debian 12 / Ubuntu).
# Idempotent: only missing packages are installed. Needs root (or sudo).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev libyaml-dev libjansson-dev libcmocka-dev zlib1g-dev
      python3 python3-h5py python3-numpy python3-matplotlib
      clang llvm)  # clang + llvm: libFuzzer harnesses (scripts/fuzz.sh) and llvm-symbolizer
pkgs+=("$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
