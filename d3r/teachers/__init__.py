"""Teachers: models (or ground truth) that produce the supervision the student learns from."""
