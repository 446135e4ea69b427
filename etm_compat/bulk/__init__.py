"""Bulk upgrade of a tree: plan, per-deployment task, executors (local or Dask), per-archive lock."""
