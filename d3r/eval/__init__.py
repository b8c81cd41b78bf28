"""d3r.eval."""
