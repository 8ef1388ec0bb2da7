"""hax-ssm: joint recall benchmarks and state-space models with sub-quadratic sparse attention."""

__version__ = "0.1.0"
