"""Helpers for the production-grade tests (multi-instance, faults, bad input, load): a real bot
process on 127.0.0.1, signed-request helpers and log capture. No tests here."""
