"""Using deployments as they are: one loader, the materialization cache, loading into ExecuTorch."""
