"""The plugin machinery: hook specifications, the registry (entry points, pluggy), registration
checks that run every item on tiny float64 problems, and the hook reference generator."""
