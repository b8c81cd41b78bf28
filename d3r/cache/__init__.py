"""d3r.cache."""
