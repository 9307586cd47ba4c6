"""Data: images, preference pairs and records, a client's own data files (any task)."""
