"""Ingest: payloads and files in, validated events out, written through the store."""
