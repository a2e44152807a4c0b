"""Blind pairwise human preference studies between image sets (METHODS.md §10).

``create`` (folders -> a study file with seeded pairs), ``images`` (what a served image may carry:
its pixels at the study's one size), ``server`` (the voting page), ``identity`` (signed rater
cookies), ``stats`` (pure statistics), ``report`` (tables, JSON, plot); ``store`` owns the sqlite file.
"""
