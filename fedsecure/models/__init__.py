"""Models: word tokenizers, the clients' FedCola-style reward models, the policy VLM."""
