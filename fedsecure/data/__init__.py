"""Data: easy-VQA loading, Dirichlet non-IID partitions, preference pairs."""
