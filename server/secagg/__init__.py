"""Secure aggregation on the server side: encrypted updates are added homomorphically as
they arrive (:mod:`~server.secagg.accumulator`); at close each group's sum goes to the
key holder (:mod:`~server.secagg.keyholder_client`) and its mean is published
(:mod:`~server.secagg.aggregator`). The server never holds a secret key."""
