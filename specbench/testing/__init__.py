"""Test-only helpers shared by every method's tests: the lossless kit and reference drafters."""
