"""The reward side of the rounds: planners for reward-model training (with secure
aggregation of the clients' adapters) and for scoring the server's public prompts, and
the metrics they record."""
