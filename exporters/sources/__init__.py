"""Sources: everything the node daemon reads, returning plain data classes.

One module per source (NVML with its XID watcher, rtnetlink, the sysfs/procfs trees, Lustre's
`lctl`). Collectors (`exporters/collectors/`) hold only their MetricDefs and the mapping from
these models to metric families; sources know nothing of metrics.
"""
