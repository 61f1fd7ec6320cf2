"""batch.*: the farm's own upkeep (dead-letter report, sweep)."""
