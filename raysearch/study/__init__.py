"""A study from start to end: its spec, the run and resume orchestration, its lock, evaluation, and the notebook
`Study`."""
