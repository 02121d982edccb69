#!/usr/bin/env bash
# Installs the Debian 12 packages moe-ep builds and tests with (as root, no terminal needed).
# Skips apt entirely when everything is already installed.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config clang
          libopenmpi-dev openmpi-bin libyaml-cpp-dev libfmt-dev nlohmann-json3-dev libcli11-dev
          libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev python3-numpy python3-matplotlib
          libpcre2-dev libicu-dev libdnnl-dev clang-format
          slurm-wlm munge iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
