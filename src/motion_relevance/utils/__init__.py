"""Small helpers shared by the entry points: config checks, instantiation, loggers, run records."""
