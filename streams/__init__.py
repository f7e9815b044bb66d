"""The streaming service: a pure core, Kafka plumbing, the faust worker, developer tools, the CLI."""
