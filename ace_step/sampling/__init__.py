"""Sampling: schedules, guidance, flow steps, editing tasks, ERG, per-run condition caching."""
