"""The trusted third party: a certificate authority served over netstrings."""
