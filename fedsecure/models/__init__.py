"""Models: the easy-VQA tokenizer and the clients' FedCola-style reward models."""
