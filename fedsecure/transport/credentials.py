"""mTLS credentials built from a verified kit."""

from __future__ import annotations

import grpc

from fedsecure.kit import Kit


def server_credentials(kit: Kit) -> grpc.ServerCredentials:
    """TLS server credentials that require a client certificate from the consortium CA."""
    return grpc.ssl_server_credentials(
        [(kit.key_pem, kit.cert_pem)],
        root_certificates=kit.ca_pem,
        require_client_auth=True,  # mutual TLS: no certificate, no connection
    )


def channel_credentials(kit: Kit) -> grpc.ChannelCredentials:
    """TLS channel credentials presenting the kit's certificate, trusting only the CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=kit.ca_pem, private_key=kit.key_pem, certificate_chain=kit.cert_pem
    )
