#!/usr/bin/env bash
# The real-Slurm tests against one Slurm version.
#
#   scripts/compat/slurm.sh SUITE        SUITE = host (or bookworm) | trixie | sid
#
# host is this machine's Slurm (Debian 12: 22.05). trixie (24.11) and sid (26.05) run in a
# debootstrap root that scripts/compat/slurm-root.sh builds once outside the clone and reuses;
# its wrapper directory goes first on PATH, where tests/harness/slurm.py and the exporter find
# slurmctld, slurmd, munged, sbatch, squeue, … .
#
# Prints exactly one line `version: X` on stdout (X: what `slurmd -V` reports, e.g. 24.11.5)
# before the tests, then runs them (pytest's output follows). Exits non-zero when the root
# cannot be built, the version cannot be read, a test fails, or a process the tests started
# is left running afterwards (it is then killed, by PID, and named).
#
# The tests (HPCOBS_COMPAT_SLURM_TESTS overrides them, as pytest arguments):
#   tests/real/test_slurm_harness.py   the harness: start/stop with no process leaked,
#                                      per-version cgroup.conf, jobs, node down, controller down
#   tests/real/test_slurm_exporter.py  exactly-once outcomes across exporter restarts (squeue
#                                      and the jobcomp tail), queue/partition/node/licence/sdiag
#                                      metrics against squeue/sinfo/sdiag, slurmctld down
#   tests/real/test_slurm_slis_real.py      requeues once, preemption, MAINT reservations, licence
#                                      wait, failed jobs, histograms against jobcomp, odd names
# Left out: test_jobs_slurm.py and test_probe_slurm.py (their jobs run programs from the host's
# .venv and Open MPI, which the chroot does not have) and test_e2e.py (run.py's e2e rows run it
# with the host's Slurm).
set -euo pipefail

suite=${1:-}
case $suite in
host | bookworm) suite=host ;;
trixie | sid) ;;
*)
    echo "usage: $0 host|trixie|sid" >&2
    exit 2
    ;;
esac

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
python=$repo/.venv/bin/python
[[ -x $python ]] || python=python3

if [[ $suite != host ]]; then
    bin=$(scripts/compat/slurm-root.sh "$suite") || {
        echo "slurm.sh[$suite]: cannot build the Slurm root (scripts/compat/slurm-root.sh)" >&2
        exit 1
    }
    export PATH=$bin:$PATH
    # the release's root, for tests that must change a file its commands read (passwd)
    export HPCOBS_COMPAT_SLURM_ROOT=${bin%/bin}/root
fi

slurmd=$(command -v slurmd || echo /usr/sbin/slurmd)
version_text=$("$slurmd" -V 2>&1) || true
version=$(sed -nE 's/^slurm(-wlm)? ([0-9][0-9.]*).*/\2/p' <<<"$version_text" | head -1)
if [[ -z $version ]]; then
    echo "slurm.sh[$suite]: cannot read the version from $slurmd -V: $version_text" >&2
    exit 1
fi
echo "version: $version"

read -r -a tests <<<"${HPCOBS_COMPAT_SLURM_TESTS:-tests/real/test_slurm_harness.py tests/real/test_slurm_exporter.py tests/real/test_slurm_slis_real.py}"
# Under /tmp: the chroots see the host's /tmp at the same path.
work=$(mktemp -d "/tmp/hpcobs-compat-slurm-$suite-XXXXXX")
started=$SECONDS
rc=0
"$python" -m pytest -p no:cacheprovider -q -m real --basetemp="$work/pytest" "${tests[@]}" || rc=$?
echo "slurm.sh[$suite]: Slurm $version: pytest exit status $rc in $((SECONDS - started)) s" >&2

# Nothing the tests started may outlive them: a process whose working directory is under
# $work (the daemons, slurmstepd and job tasks of the harness's clusters, exporters). A
# process in a chroot may show its directory with the root's path before it, or without
# /tmp: the directory's unique name is what is matched.
leaked=()
for proc in /proc/[0-9]*; do
    cwd=$(readlink "$proc/cwd" 2>/dev/null) || continue
    [[ $cwd == *"/${work##*/}/"* ]] || continue
    stat=$(cat "$proc/stat" 2>/dev/null) || continue
    state=${stat##*) }
    [[ ${state%% *} == [ZX] ]] && continue
    leaked+=("${proc#/proc/} ($(cat "$proc/comm" 2>/dev/null))")
    kill -9 "${proc#/proc/}" 2>/dev/null || true
done
if ((${#leaked[@]})); then
    echo "slurm.sh[$suite]: processes left running by the tests (killed): ${leaked[*]}" >&2
    rc=1
fi
if ((rc == 0)); then
    rm -rf "$work"
else
    echo "slurm.sh[$suite]: test files kept in $work" >&2
fi
exit "$rc"
