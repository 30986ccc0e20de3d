"""Batch runner: seeding, executors (local processes, Ray) and the SQLite run store."""

from safetybed.runner.batch import RunSummary, resume_run, run_summary, start_run, summarize
from safetybed.runner.episode import EpisodeTask, run_episode
from safetybed.runner.seeding import episode_seed, episode_sequence
from safetybed.runner.store import DEFAULT_STORE, RunStore
from safetybed.sims.rollout import EpisodeRecord

__all__ = ["DEFAULT_STORE", "EpisodeRecord", "EpisodeTask", "RunStore", "RunSummary", "episode_seed",
           "episode_sequence", "resume_run", "run_episode", "run_summary", "start_run", "summarize"]
