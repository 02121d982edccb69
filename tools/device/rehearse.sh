#!/usr/bin/env bash
# Rehearse tools/device/device_check.sh on this Debian 12 build machine as if it were the lent GPU
# machine. In a private mount namespace /usr is overlaid with whiteouts for every file of the
# packages the device lacks (Open MPI and the libraries under it, yaml-cpp, OpenBLAS, fmt,
# nlohmann-json, CLI11, GoogleTest, ssh) and for the alternatives links into them, so the full
# build can only succeed from the carried prefix (build/device_deps). With WHEEL_PYTHON set to
# the python3 of an environment holding the nvidia-* wheels (as PyTorch installs them), the
# toolkit's cuBLAS and NCCL are hidden too and the script must take them from the wheels.
# There is no GPU here: device_check.sh runs with ALLOW_NO_GPU=1 (GPU tests skip; the 2-rank
# smoke and bench_gpu run on the CPU backend, the benchmark with configs/models/mid.yaml).
#
#   tools/device/rehearse.sh [command...]          (as root: unshare and mount)
#   BUILD_DIR=build/x JOBS=2 BUDGET_S=5400 WHEEL_PYTHON=/path/venv/bin/python3 tools/device/rehearse.sh
#
# Without a command it runs `tools/device/device_check.sh run`, building under BUILD_DIR (default
# build/rehearse) with logs under BUILD_DIR/out; a command (e.g. `bash -c 'ldd moe-ep'`) runs in
# the same hidden environment instead. Exit code: the command's, or 2 when something meant to be
# hidden is still visible.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="$(realpath -m "${BUILD_DIR:-$ROOT/build/rehearse}")"
HIDE_PACKAGES=(
  libopenmpi3 libopenmpi-dev openmpi-bin openmpi-common libcaf-openmpi-3 libcoarrays-openmpi-dev
  libpmix2 libpmix-dev libhwloc15 libhwloc-dev libhwloc-plugins libevent-core-2.1-7
  libevent-pthreads-2.1-7 libevent-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libevent-dev
  libmunge2 libudev1 libltdl7 libltdl-dev libfabric1 libucx0 libpsm2-2 libpsm-infinipath1
  libibverbs1 libibverbs-dev ibverbs-providers librdmacm1 libnuma1 libnuma-dev
  libyaml-cpp0.7 libyaml-cpp-dev libopenblas0 libopenblas0-pthread libopenblas-dev
  libopenblas-pthread-dev libgfortran5 libquadmath0 libfmt9 libfmt-dev nlohmann-json3-dev
  libcli11-dev libgtest-dev googletest libbenchmark-dev libbenchmark1debian openssh-client)

work="$(mktemp -d /tmp/moe_rehearse.XXXXXX)"
trap 'rm -rf "$work"' EXIT
upper="$work/upper"
mkdir -p "$upper" "$work/work"

# Files (and symlinks) to hide; Debian 12 merged /lib, /bin, /sbin into /usr.
installed=()
for p in "${HIDE_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' && installed+=("$p")
done
# Each path through its real directory: a whiteout under a directory that is a symlink would
# turn that symlink into a directory.
dpkg -L "${installed[@]}" | grep '^/' | while IFS= read -r f; do
  [[ -L "$f" || (-e "$f" && ! -d "$f") ]] && echo "$(readlink -f "$(dirname "$f")")/${f##*/}"
done | grep '^/usr/' | sort -u >"$work/hidden"
if [[ -n "${WHEEL_PYTHON:-}" ]]; then
  cuda="$(readlink -f /usr/local/cuda)"
  find "$cuda/" \( -name 'libcublas*' -o -name 'libnccl*' -o -name 'cublas*.h' -o -name 'nccl*.h' \) \
    ! -type d >>"$work/hidden"
fi
# Links made by update-alternatives (mpirun, mpi.h, libblas.so.3, ...) that lead into hidden files.
find /usr/bin /usr/include /usr/include/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu \
  /usr/lib/x86_64-linux-gnu/pkgconfig -maxdepth 1 -type l -printf '%p\t' -exec readlink -f {} \; |
  awk -F'\t' 'NR == FNR { hidden[$0] = 1; next } ($2 in hidden) { print $1 }' \
    "$work/hidden" - >"$work/links"
cat "$work/links" >>"$work/hidden"
while IFS= read -r f; do
  mkdir -p "$upper$(dirname "${f#/usr}")"
  mknod "$upper${f#/usr}" c 0 0 # an overlayfs whiteout
done < <(sort -u "$work/hidden")
echo "rehearse: hiding $(sort -u "$work/hidden" | wc -l) files of ${#installed[@]} packages$(
  [[ -z "${WHEEL_PYTHON:-}" ]] || echo " and the toolkit's cuBLAS/NCCL")"

# What must be gone inside: checked before the run, so a rehearsal cannot pass by accident.
sentinels=(/usr/bin/mpirun /usr/bin/mpicc /usr/bin/ssh /usr/include/x86_64-linux-gnu/mpi.h
  /usr/lib/x86_64-linux-gnu/libmpi.so.40 /usr/lib/x86_64-linux-gnu/libyaml-cpp.so
  /usr/lib/x86_64-linux-gnu/cmake/yaml-cpp/yaml-cpp-config.cmake /usr/lib/x86_64-linux-gnu/libfmt.so
  /usr/include/fmt/core.h /usr/include/nlohmann/json.hpp /usr/include/CLI/CLI.hpp
  /usr/include/gtest/gtest.h /usr/src/googletest /usr/lib/x86_64-linux-gnu/libgtest.a
  /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/x86_64-linux-gnu/libblas.so.3
  /usr/lib/x86_64-linux-gnu/libevent_core-2.1.so.7 /usr/lib/x86_64-linux-gnu/libhwloc.so.15)
[[ -n "${WHEEL_PYTHON:-}" ]] && sentinels+=(/usr/local/cuda/include/cublas_api.h
  /usr/local/cuda/include/nccl.h /usr/local/cuda/lib64/libcublas.so)

# python3 on PATH is the wheels' one, as on the device (a wrapper: a symlink would lose the venv).
mkdir -p "$work/bin"
if [[ -n "${WHEEL_PYTHON:-}" ]]; then
  printf '#!/bin/bash\nexec %q "$@"\n' "$WHEEL_PYTHON" >"$work/bin/python3"
  chmod +x "$work/bin/python3"
fi

export ROOT BUILD_DIR NUM_SENTINELS="${#sentinels[@]}" UPPER="$upper" OVERLAY_WORK="$work/work" PATH="$work/bin:$PATH"
# shellcheck disable=SC2016 # expanded by the inner bash, inside the namespace
unshare -m bash -c '
  set -euo pipefail
  mount --make-rprivate /
  mount -t overlay overlay -o "lowerdir=/usr,upperdir=$UPPER,workdir=$OVERLAY_WORK" /usr
  visible=0
  for ((i = 0; i < NUM_SENTINELS; i++)); do
    s="$1"
    shift
    if [[ -n "$(find "$s" \( -type f -o -type l \) -print -quit 2>/dev/null)" ]]; then
      echo "rehearse: still visible: $s"; visible=1
    fi
  done
  [[ $visible == 0 ]] || exit 2
  echo "rehearse: system packages hidden; python3 is $(command -v python3)"
  export ALLOW_NO_GPU=1 BUILD_DIR OUT="${OUT:-$BUILD_DIR/out}" PREFIX_DIR="${PREFIX_DIR:-$BUILD_DIR/prefix}"
  (($# > 0)) || set -- "$ROOT/tools/device/device_check.sh" run
  exec "$@"
' rehearse "${sentinels[@]}" "$@"
