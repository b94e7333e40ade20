"""ltcore: long-tailed visual recognition, taught and reproduced."""
__version__ = "0.1.0"
