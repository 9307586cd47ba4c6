"""The server's gRPC services (Federation for clients, Admin for the operator): thin
servicers that validate, call a handler and map each domain error to one status code;
:func:`server.app.start_server` wires them together."""
