"""hpcobs exporters: the node daemon, the Slurm exporter, the MPI probe and their shared runtime."""
