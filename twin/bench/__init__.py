"""The bench: the calibration workload suite (workloads), the bench workflow that joins a board's
cycle counts with the twin's counts (workflow), and power traces (traces)."""
