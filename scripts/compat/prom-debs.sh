#!/usr/bin/env bash
# Debian's Prometheus, promtool and Alertmanager of one suite, runnable on this Debian 12 host.
#
#   scripts/compat/prom-debs.sh SUITE        SUITE = bookworm | trixie | sid
#
# bookworm is the host's own packages (installed by scripts/bootstrap.sh). For trixie and sid the
# script fetches the .debs with `apt-get download` through a private apt configuration (its own
# sources.list, lists and cache under $HPCOBS_COMPAT_DIR/apt-SUITE, signed by the host's
# debian-archive-keyring, whose 2023.3+deb12u2 keys verify trixie and sid) and unpacks them with
# `dpkg -x` into $HPCOBS_COMPAT_DIR/prom-SUITE/root. Both are outside the clone, so a rerun reuses
# them (set HPCOBS_COMPAT_REFRESH=1 to fetch again). The Go binaries need only libc6 >= 2.34.
#
# In every case it fills $HPCOBS_COMPAT_DIR/prom-SUITE/bin with symlinks named as the harness
# looks them up on PATH (prometheus, promtool, prometheus-alertmanager, alertmanager, amtool;
# for trixie and sid the two Alertmanager names are wrappers that give it its own templates,
# see below), runs each with --version, and prints on stdout, one per line:
#   bin: DIR
#   prometheus: VERSION            (also promtool, alertmanager, amtool)
# Progress goes to stderr. Exits non-zero if a package or binary is missing or does not run.
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
prom=$compat/prom-$suite
root=$prom/root
bin=$prom/bin
log() { echo "prom-debs[$suite]: $*" >&2; }

mkdir -p "$prom"
# One fetch at a time per suite (two shells or CI rows sharing the directory).
exec 9>"$prom/.lock"
flock 9

# shellcheck source=scripts/compat/debs.sh
source "$(dirname "$0")/debs.sh"

fetch() {
    # From trixie on promtool is its own package (bookworm ships it inside prometheus).
    fetch_debs "$compat/apt-$suite" "$root" "$suite" prometheus promtool prometheus-alertmanager
}

if [[ $suite == bookworm ]]; then
    src=/usr/bin
else
    src=$root/usr/bin
    if [[ -n ${HPCOBS_COMPAT_REFRESH:-} || ! -s $root/.debs ]]; then
        fetch
    else
        log "reusing $root ($(tr '\n' ' ' <"$root/.debs"))"
    fi
fi

mkdir -p "$bin"
for pair in prometheus:prometheus promtool:promtool prometheus-alertmanager:prometheus-alertmanager \
    alertmanager:prometheus-alertmanager amtool:amtool; do
    name=${pair%%:*} target=$src/${pair#*:}
    if [[ ! -x $target ]]; then
        log "missing $target"
        exit 1
    fi
    rm -f "$bin/$name"
    ln -s "$target" "$bin/$name"
done

# Debian's Alertmanager reads its default templates from the fixed path
# /usr/share/prometheus/alertmanager (default.tmpl, email.tmpl): an unpacked one would read
# the host's (0.25's). A wrapper gives it its own, bind-mounted in a private mount namespace
# (root; `unshare --mount`); the exec chain keeps the PID, so stopping it by PID still works.
templates=/usr/share/prometheus/alertmanager
if [[ $suite != bookworm ]]; then
    if [[ -d $templates ]] && unshare --mount --propagation private \
        mount --bind "$root$templates" "$templates" 2>/dev/null; then
        for name in prometheus-alertmanager alertmanager; do
            rm -f "$bin/$name"
            cat >"$bin/$name" <<WRAPPER
#!/bin/sh
# prometheus-alertmanager of $suite with its own templates (scripts/compat/prom-debs.sh).
exec unshare --mount --propagation private sh -c \\
    'mount --bind "\$1" $templates && shift && exec "\$@"' \\
    sh "$root$templates" "$root/usr/bin/prometheus-alertmanager" "\$@"
WRAPPER
            chmod +x "$bin/$name"
        done
    else
        log "note: no private mount namespace here, so this Alertmanager reads the host's" \
            "default templates from $templates"
    fi
fi

echo "bin: $bin"
for name in prometheus promtool alertmanager amtool; do
    # "prometheus, version 3.5.3+ds1 (branch: …)"; alertmanager and amtool print the same form.
    if ! out=$("$bin/$name" --version 2>&1); then
        log "$name --version failed: $out"
        exit 1
    fi
    version=$(sed -n 's/^.*, version \([^ ]*\).*$/\1/p' <<<"$out" | head -n1)
    if [[ -z $version ]]; then
        log "$name --version printed no version: $out"
        exit 1
    fi
    echo "$name: $version"
done
