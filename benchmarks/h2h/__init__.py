"""The head-to-head benchmark's parts: tasks, the two tools' sides, calibration, cells, report."""
