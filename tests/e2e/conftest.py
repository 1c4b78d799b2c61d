"""The e2e tests use the `e2e_env` and `start_server` fixtures of tests/support/server.py (a plugin of the root
conftest)."""
