"""Running a run, apart from the round loop: the run folder's schema (folder), its log and
progress lines (log), its lock (lock), the checks before it starts (preflight), stop signals
(signals), memory peaks (resources) and the named methods of ``compare`` (methods)."""
