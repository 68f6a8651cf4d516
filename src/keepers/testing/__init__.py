"""Helpers for tests and benchmarks: real services started on loopback, no mocks."""
