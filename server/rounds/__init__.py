"""Runs, rounds, phases and tasks: the engine that drives them, the planners that fill
them, admission of signed submissions, and the durable state (SQLite, object store)."""
