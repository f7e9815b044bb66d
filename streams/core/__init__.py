"""The pure processing core: wire records, user state, scoring, the Processor, offline scoring.

Imports neither faust nor any Kafka client, so the same code serves the worker, the trainer's
evaluation and offline scoring.
"""
