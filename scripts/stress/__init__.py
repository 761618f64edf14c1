"""The reliability and security harness (`make stress`): one module per scenario, run.py."""
