"""Offline training of re-rankers from wire-format events, and offline evaluation."""
