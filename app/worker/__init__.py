"""Workers: supervisors that claim jobs and run each in a spawned training child (loop.py, runner.py)."""
