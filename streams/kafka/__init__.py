"""Kafka plumbing shared by the CLI, the worker's side tasks and the trainer: client settings,
topics, producers and readers."""
