"""Blind pairwise human preference studies between image sets (METHODS.md §10).

``create`` (folders -> a study file with seeded pairs), ``server`` (the voting page),
``stats`` (pure statistics), ``report`` (tables, JSON, plot); ``store`` owns the sqlite file.
"""
