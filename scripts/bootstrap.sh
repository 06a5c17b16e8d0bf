#!/usr/bin/env bash
# Install everything the suite and the demo need, idempotently, on Debian 12 as root:
# the real components (Debian packages) and the Python package in .venv.
# Usage: scripts/bootstrap.sh            (packages + venv)
#        HPCOBS_SKIP_APT=1 scripts/bootstrap.sh   (venv only)
set -euo pipefail
cd "$(dirname "$0")/.."

# victoria-metrics: VictoriaMetrics single-node and vmalert (the SLO rules' second engine).
DEBS=(prometheus prometheus-alertmanager prometheus-pushgateway prometheus-node-exporter
      victoria-metrics slurm-wlm slurmctld slurmd slurm-client munge openmpi-bin libopenmpi-dev
      gcc python3-dev iproute2 openssl systemd procps)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if [[ "${HPCOBS_SKIP_APT:-0}" != 1 ]]; then
    missing=()
    for p in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) != 0 ]]; then
            log "missing Debian packages (${missing[*]}) and not root: install them first"; exit 1
        fi
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian's postinst may start daemons where systemd/invoke-rc.d works; the suite runs
    # its own private instances on free ports, so nothing here depends on them.

    # MPICH, the second MPI the probe is tested with (4-byte handles, where Open MPI's are
    # pointers): extracted under build/mpich, not installed.
    if [[ ! -x build/mpich/usr/bin/mpiexec.hydra ]]; then
        log "fetching MPICH into build/mpich (extracted, not installed)"
        scripts/fetch-mpich.sh build/mpich ||
            log "warning: could not fetch MPICH; tests/real/test_probe_mpich.py will fail"
    fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.hpcobs-installed
want=$(cat pyproject.toml setup.py exporters/probe/_timedloop.c | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing hpcobs (editable) with extras dev,probe"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev,probe]'
    echo "$want" > "$stamp"
fi
log "ready: .venv/bin/python ($(.venv/bin/python --version))"
