"""The job runner every pipeline runs on: ``handler`` (what a pipeline provides),
``registry`` (which handler runs which kind), ``runner`` (one delivery of a job),
``heartbeat`` and ``keeper`` (the lease), ``cancel_watch``, ``reaper``, and ``probe`` (a job
that only waits, to check the runner itself)."""
