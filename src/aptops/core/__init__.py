"""Shared services every stage uses: errors, logging and progress, configs, artifacts, locations, metrics."""
