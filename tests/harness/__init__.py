"""Test harnesses: a multi-host mesh in network namespaces (netns)."""
