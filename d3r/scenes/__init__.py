"""Scenes: records, synthetic rooms, readers for real data, view-set sampling, preprocessing."""
