"""Generated stubs; edit proto/fedsecure/v1/*.proto instead."""
