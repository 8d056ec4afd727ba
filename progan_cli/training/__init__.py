"""Training: the schedule, one step, the progressive loop and its multi-process plumbing."""
