#!/usr/bin/env bash
# Install and start what Berth needs on a Debian 12 machine; safe to run again (it only does
# what is missing).   usage: scripts/bootstrap.sh run|test
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
say() { printf '\033[1;34m[bootstrap]\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "Berth runs containers and VMs on this machine: run this as root." >&2
  exit 1
fi

# --- Debian packages --------------------------------------------------------------------
DEBS=(redis-server busybox-static iproute2 nftables gcc libc6-dev pkg-config python3-dev
      python3-venv libvirt-dev libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
      libxml2-utils debootstrap xorriso procps)
if [ "$MODE" = test ]; then
  DEBS+=(postgresql chromium lxc nginx)  # nginx: `nginx -t` on deploy/nginx (tests/panel/test_deploy.py)
  DEBS+=(isolinux syslinux-common)  # the installer-ISO tests build a bootable ISO (tests/workers/drivers/iso_fixtures.py)
fi
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Python environment -------------------------------------------------------------------
PY=${PYTHON:-python3}
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.sha 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > .venv/.requirements.sha
fi

# --- the container shim (a small C program, one per container) ---------------------------
mkdir -p var/bin
if [ ! -e var/bin/berth-shim ] || [ -n "$(find workers/shim -newer var/bin/berth-shim)" ]; then
  say "building var/bin/berth-shim"
  cc -O2 -Wall -Wextra -o var/bin/berth-shim workers/shim/*.c
fi

# --- services -----------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --dir /var/lib/redis \
    --logfile /var/log/redis/berth.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

.venv/bin/python -m workers.drivers.vm.daemons ensure

if [ "$MODE" = test ]; then
  if ! pg_isready -q 2>/dev/null; then
    say "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 50); do pg_isready -q && break; sleep 0.2; done
  fi
  # The suite connects over the local socket as root (peer or trust authentication).
  if ! runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='root'" | grep -q 1; then
    say "creating PostgreSQL role root"
    runuser -u postgres -- psql -q -c "CREATE ROLE root SUPERUSER LOGIN"
  fi
fi
