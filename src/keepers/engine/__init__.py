"""Set-based compute in Ibis: traits, stages, segments."""
