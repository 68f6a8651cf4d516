"""Demo data: a seeded, deterministic web shop (plus a small B2B side) as Segment messages."""
