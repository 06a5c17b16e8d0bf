#!/usr/bin/env bash
# Debian's VictoriaMetrics (single-node) and vmalert of one suite, runnable on this Debian 12 host.
#
#   scripts/compat/vm-debs.sh SUITE        SUITE = bookworm | trixie | sid
#
# bookworm is the host's own package victoria-metrics (1.79, installed by scripts/bootstrap.sh).
# For trixie (1.112) and sid (1.145) the script fetches the victoria-metrics .deb with
# `apt-get download` through a private apt configuration (its own sources.list, lists and cache
# under $HPCOBS_COMPAT_DIR/apt-vm-SUITE, signed by the host's debian-archive-keyring) and
# unpacks it with `dpkg -x` into $HPCOBS_COMPAT_DIR/vm-SUITE/root, as prom-debs.sh does for
# Prometheus; both are outside the clone, so a rerun reuses them (HPCOBS_COMPAT_REFRESH=1
# fetches again). The binaries are static Go programs.
#
# It fills $HPCOBS_COMPAT_DIR/vm-SUITE/bin with symlinks named as the harness looks them up on
# PATH (victoria-metrics, vmalert), runs each with -version, and prints on stdout:
#   bin: DIR
#   package: VERSION                   (the .deb's version)
#   victoria-metrics: VERSION          (what `victoria-metrics -version` prints; Debian's 1.79
#   vmalert: VERSION                    build prints nothing: "none reported")
# Progress goes to stderr. Exits non-zero if the package or a binary is missing or does not run.
set -euo pipefail

suite=${1:-}
case $suite in
bookworm | trixie | sid) ;;
*)
    echo "usage: $0 bookworm|trixie|sid" >&2
    exit 2
    ;;
esac

compat=${HPCOBS_COMPAT_DIR:-/var/tmp/hpcobs-compat}
vm=$compat/vm-$suite
root=$vm/root
bin=$vm/bin
log() { echo "vm-debs[$suite]: $*" >&2; }

mkdir -p "$vm"
exec 9>"$vm/.lock"
flock 9

# shellcheck source=scripts/compat/debs.sh
source "$(dirname "$0")/debs.sh"

fetch() {
    local apt=$compat/apt-vm-$suite
    fetch_debs "$apt" "$root" "$suite" victoria-metrics
    dpkg-deb -f "$apt"/debs/victoria-metrics_*.deb Version >"$root/.version"
}

if [[ $suite == bookworm ]]; then
    src=/usr/bin
    package=$(dpkg-query -W -f='${Version}' victoria-metrics 2>/dev/null || true)
    if [[ -z $package ]]; then
        log "victoria-metrics is not installed: run scripts/bootstrap.sh"
        exit 1
    fi
else
    src=$root/usr/bin
    if [[ -n ${HPCOBS_COMPAT_REFRESH:-} || ! -s $root/.version ]]; then
        fetch
    else
        log "reusing $root ($(cat "$root/.version"))"
    fi
    package=$(cat "$root/.version")
fi

mkdir -p "$bin"
for name in victoria-metrics vmalert; do
    if [[ ! -x $src/$name ]]; then
        log "missing $src/$name"
        exit 1
    fi
    rm -f "$bin/$name"
    ln -s "$src/$name" "$bin/$name"
done

echo "bin: $bin"
echo "package: $package"
for name in victoria-metrics vmalert; do
    # upstream builds print e.g. "victoria-metrics-20250101-000000-tags-v1.112.0-0-g1234abc"
    if ! out=$("$bin/$name" -version 2>&1); then
        log "$name -version failed: $out"
        exit 1
    fi
    version=$(head -n1 <<<"$out" | tr -d '\r')
    echo "$name: ${version:-none reported}"
done
