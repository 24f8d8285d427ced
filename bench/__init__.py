"""Benchmarks, each a script (``python bench/NAME.py``); a package only so module names are unique."""
