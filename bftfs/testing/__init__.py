"""Test harness shared by every protocol's tests: in-process cluster, fault injection."""
