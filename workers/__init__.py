"""How the farm's processes run: profiles, the `farm` CLI, signals, metrics, launchers."""
