"""d3r.student."""
