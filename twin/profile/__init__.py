"""Counts: the profiling plugin's dump cut at the firmware's phase markers (counts), instructions by
class (isa), per function and per phase."""
