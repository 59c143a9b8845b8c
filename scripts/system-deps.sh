#!/usr/bin/env bash
# Installs the system packages pgward's build and tests need, when they are missing.
# libclang: the pg_query crate generates its libpg_query bindings with bindgen.
# psql/pg_dump/pgbench (PostgreSQL client tools): the driver tests and benchmarks.
# pgbouncer: only for `make bench`.
set -euo pipefail

need=()
# (libclang-cpp, which some images carry, is not what bindgen loads: match libclang.so / libclang-N.so only.)
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' || compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
  || compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
command -v psql >/dev/null || need+=(postgresql-client)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
[[ "${1:-}" == "--bench" ]] && { command -v pgbouncer >/dev/null || need+=(pgbouncer); }

if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
