# shellcheck shell=bash
# Sourced by prom-debs.sh and vm-debs.sh: fetch Debian packages of one suite through a private
# apt configuration (its own sources.list, lists and cache under APT, signed by the host's
# debian-archive-keyring) and unpack them with `dpkg -x` into ROOT (replaced whole, so an
# interrupted fetch never leaves half a root). The .debs stay in APT/debs; ROOT/.debs lists them.
# Needs a `log` function from the caller.
#
#   fetch_debs APT ROOT SUITE PACKAGE...
fetch_debs() {
    local apt=$1 root=$2 suite=$3
    shift 3
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$apt/etc/sources.list.d" "$apt/etc/preferences.d" "$apt/state/lists/partial" \
        "$apt/cache/archives/partial" "$apt/debs"
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian $suite main" >"$apt/etc/sources.list"
    local -a opts=(
        -o "Dir::Etc::sourcelist=$apt/etc/sources.list"
        -o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
        -o "Dir::Etc::preferences=$apt/etc/preferences"
        -o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
        -o "Dir::State=$apt/state"
        -o "Dir::Cache=$apt/cache"
        -o "Acquire::Languages=none"
        -o "APT::Get::List-Cleanup=false"
        -o "APT::Sandbox::User=root"
    )
    # sid's Release file may be past its Valid-Until between dinstall runs.
    [[ $suite == sid ]] && opts+=(-o "Acquire::Check-Valid-Until=false")
    log "apt-get update ($suite main)"
    apt-get -q "${opts[@]}" update >&2
    rm -f "$apt/debs"/*.deb
    log "apt-get download $*"
    (cd "$apt/debs" && apt-get -q "${opts[@]}" download "${@/%//$suite}" >&2)
    rm -rf "$root.part"
    mkdir -p "$root.part"
    local deb
    for deb in "$apt/debs"/*.deb; do
        log "dpkg -x $(basename "$deb")"
        dpkg -x "$deb" "$root.part"
    done
    rm -rf "$root"
    mv "$root.part" "$root"
    (cd "$apt/debs" && ls -1 ./*.deb) >"$root/.debs"
}
