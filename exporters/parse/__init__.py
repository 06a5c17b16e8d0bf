"""Pure parsers: text (the contents of sysfs/procfs/Lustre files, command output) → dataclasses.

No I/O here: collectors read files at the edges and hand the text to these functions, which
are fuzzed with hypothesis (arbitrary input never raises anything but `ValueError`).
"""
