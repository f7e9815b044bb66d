"""Developer tools: the embedded broker, processes, synthetic data, demo, replay and traffic.

Production code (the worker, the trainer, the core) never imports this package.
"""
