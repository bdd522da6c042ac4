"""X.509 building blocks shared by the TTP, the server and the client."""
