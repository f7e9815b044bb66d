"""The faust worker: App, agent, batching, tables, monitoring, model swaps and the item catalog.

Every use of a faust or aiokafka private attribute lives in :mod:`streams.worker.faust_hooks`.
"""
