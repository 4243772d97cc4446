"""Reliability and security tests: fault injection, fuzzing and untrusted files."""
