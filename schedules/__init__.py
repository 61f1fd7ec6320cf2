"""When batch jobs run: the beat schedule and the by-hand batch runner."""
