"""d3r.train."""
