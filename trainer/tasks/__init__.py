"""Built-in task modules: the study's networks, trained through the same code path as a user's task."""
