#!/usr/bin/env bash
# Extract Debian's MPICH (and the libslurm its launcher links) under DIR, without installing
# it: the probe's second-MPI test (tests/real/test_probe_mpich.py) runs from there, and Open
# MPI stays the system MPI (mpirun, mpicc). MPICH's libraries' own dependencies (hwloc, UCX,
# gfortran) come with Open MPI's packages. Usage: scripts/fetch-mpich.sh DIR
set -euo pipefail
dir=${1:?usage: fetch-mpich.sh DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dir.part"' EXIT
chown _apt "$tmp" 2>/dev/null || true  # apt-get download writes as the _apt user
(cd "$tmp" && apt-get download -qq mpich libmpich12 libslurm38 >/dev/null)
mkdir -p "$dir.part"
for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$dir.part"
done
lib=$(find "$dir.part" -name libmpich.so.12 -printf '%h\n' | head -1)
[[ -n $lib ]] || { echo "fetch-mpich: no libmpich.so.12 in the packages" >&2; exit 1; }
ln -sfn libmpich.so.12 "$lib/libmpi.so.12"  # the soname mpi4py's MPICH module links
[[ -x $dir.part/usr/bin/mpiexec.hydra ]] || { echo "fetch-mpich: no mpiexec.hydra" >&2; exit 1; }
rm -rf "$dir"
mv "$dir.part" "$dir"
