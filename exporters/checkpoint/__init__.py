"""Checkpoint latency from inside the job (docs/checkpoint.md): `hpcobs-checkpoint run` and
`with checkpoint("name"):` time a job's checkpoint and record it for Prometheus.

    hpcobs-checkpoint run [--name N] [--path P] [--textfile.directory D | --pushgateway.url U] -- CMD…

or, in Python:

    from hpcobs.exporters.checkpoint import checkpoint

    with checkpoint("model", path="/scratch/ckpt/step-1200"):
        save(model)

One checkpoint *stream* is a job (`SLURM_JOB_ID`) and a name. Each attempt records its
duration, the bytes written (the command's I/O counters, or the size of `--path`), its result
(the exit code, or whether the `with` body raised) and adds to the stream's totals, which are
kept in the stream's own exposition text:

- textfile: `checkpoint-<job_id>-<name>.prom` in the node exporter's textfile directory,
  written atomically (temporary file in the same directory, then rename), so a collector only
  ever reads a whole file; the file is also where the totals live between invocations;
- Pushgateway: the same text, PUT to the group `job/hpcobs_checkpoint/job_id/<id>/name/<name>/
  node/<node>` (plus `cluster` when Slurm names it); the totals live in a copy of the text in a
  private state directory on the node (`$TMPDIR/hpcobs-checkpoint-<uid>`).

Invocations of one stream may overlap (several ranks of a job on a node): the read, update and
write of the totals happen under an advisory lock on the directory (`flock`), given up after
`--lock.timeout` seconds, so a stuck lock delays a checkpoint by at most that much.

It never fails the job: whatever goes wrong with the recording (no such directory, a full disk,
the Pushgateway down, a bad flag) is one warning on stderr, and `run` exits with CMD's exit code
(128 + N when a signal N killed it, as the shell reports it). SIGTERM, SIGINT, SIGHUP, SIGQUIT,
SIGUSR1 and SIGUSR2 are forwarded to CMD (Slurm sends SIGTERM, or `--signal`'s choice, before a
job's end), and the interrupted attempt is recorded as a failure.

Run time. `hpcobs_checkpoint_run_seconds_total` is the job's run time up to the end of the
stream's latest checkpoint, and `hpcobs_checkpoint_seconds_total` the wall time its checkpoints
took (overlapping attempts counted once), so between two checkpoints their increases are the
checkpoint's duration and the whole cycle's: the ratio is the share of the run spent
checkpointing, which `slo/examples/checkpoint-time.yaml` holds under 5 %. The job's start is
`SLURM_JOB_START_TIME` where Slurm sets it (23.02 and later), else the start of the job step's
first process on this node (the child of `slurmstepd` above this process), else the start of
the stream's first checkpoint.

The modules, in the order of the data: `model` (an attempt, a stream's totals: pure),
`measure` (bytes written, the job's start), `metrics` (declarations, families, reading totals
back: pure), `outputs` (textfile or Pushgateway, the lock, the options), `context` (the
context manager) and `cli` (the command, signal forwarding).
"""

from hpcobs.exporters.checkpoint.context import Checkpoint, checkpoint

__all__ = ["Checkpoint", "checkpoint"]
