"""``safetybed certify CERT_SPEC``: smoothed episodes through the batch runner, certificates, attacks, report.

Steps (Kumar, Levine & Feizi 2022; ``research/policy_smoothing.md`` §1(d) "pseudo-code for a full run"):

1. **Clean smoothed episodes.** The runner plays the *base* controller on the spec's scenario with
   ``perturbations.observation_noise_std = sigma`` (:func:`~safetybed.certify.smoothing.smoothed_scenario`):
   fresh N(0, sigma^2 I) noise on every raw observation, before frame stacking, never clipped. That is the
   smoothed controller, episode for episode equal in distribution to
   :class:`~safetybed.certify.smoothing.SmoothedController` on the noise-free scenario (and draw for draw equal
   when it uses the scenario's noise stream; see :mod:`safetybed.certify.smoothing`). The episodes are an
   ordinary run in the run store: parallel (``workers``), seeded per episode, resumable; running the same spec
   again against the same store reuses (or finishes) the run instead of starting a new one.
2. **Certificates.** At every budget ``B`` of the spec, the estimator of the spec's ``quantity``
   (:mod:`safetybed.certify.estimators`) turns the ``n`` clean returns into a lower bound that holds with
   probability ``>= 1 - alpha`` over the sampled episodes, for every adversary with total l2 budget ``B``
   (``sqrt(sum_t ||delta_t||^2) <= B``, observation units). The DKW, integer and binary estimators bound
   every ``B`` simultaneously (one confidence event); the percentile bound does with its default DKW
   correction.
3. **Attacks as sanity checks** (§3.3): the budget-carryover PGD attack of :mod:`safetybed.certify.attack`
   at every ``B``, for every configuration of ``[attack]``; the worst (lowest) configuration per ``B`` must
   satisfy ``attacked mean + 3 SEM >= certificate`` (a quantile: its distribution-free upper confidence
   bound at the same one-sided level, 0.99865). A failed check is a *violation*: a bug, or a certificate
   that does not hold. The unsmoothed base controller is attacked at the largest ``B`` as a control.
4. ``certificate.json`` (inputs, sample counts, alpha, weight sha256, versions, certified values, clean
   estimate, run id, attacks, violations) and a self-contained ``report.html``.

**Controllers that adapt at test time are refused** (the planner of :mod:`safetybed.control.planner`, with any
``adapt:`` method, issue 15). The smoothing argument itself would cover them: Kumar et al.'s bound holds for any
base policy that is a function of the noisy observation history, and our adapt-then-act procedure is one (each
episode starts from the trained weights, every update reads only that episode's noisy observations, and no state
crosses episodes), so steps 1-2 could certify the whole procedure as the smoothed policy. What this pipeline cannot
do for it is step 3: the attacks differentiate a policy network's actions, and the planner's action is the argmax
of a score that changes its own weights; without those checks we would issue a certificate that was never sanity-
checked, so :func:`resolve_certification` refuses with a message that says so.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from scipy import stats

from safetybed import __version__
from safetybed.certify import estimators
from safetybed.certify.smoothing import frame_stack_of, smoothed_scenario
from safetybed.control.certified import CERTIFICATE_FORMAT, certificate_digest
from safetybed.control.checkpoint import Checkpoint, load_checkpoint, sha256_file
from safetybed.errors import IncompleteRunError, InputError, SpecError
from safetybed.jsonsafe import json_safe
from safetybed.runner import RunStore, resume_run, start_run
from safetybed.runner.batch import scenario_digest, stored_episodes
from safetybed.spec import ScenarioSpec
from safetybed.spec.certify import AttackSpec, LoadedCertifySpec, load_certify_spec
from safetybed.spec.scenario import with_backend
from safetybed.threads import torch_threads

FORMAT = CERTIFICATE_FORMAT
#: One-sided level of the attack check: ``mean + 3 SEM`` is a 0.99865 upper confidence bound (normal).
CHECK_SIGMAS = 3.0
#: Default output folder: ``certificates/<spec name>/``.
DEFAULT_OUT = Path("certificates")
#: Budgets of the certified curve drawn in the report (besides the spec's own).
CURVE_POINTS = 41

ProgressCallback = Callable[[int, int], None]
ProgressFactory = Callable[[str], AbstractContextManager[ProgressCallback | None]]


# -- resolving a spec -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Certification:
    """A certification spec with everything it references loaded and checked."""

    loaded: LoadedCertifySpec
    controller_path: Path
    #: The controller reference stored with the run (the controller spec path, relative to the cwd if inside it).
    controller_ref: str
    checkpoint: Checkpoint
    deterministic: bool
    scenario: ScenarioSpec
    scenario_path: Path
    #: ``scenario`` with the smoothing noise (what the runner plays).
    run_scenario: ScenarioSpec
    frame_stack: int
    return_range: tuple[float, float]
    #: ``episode_steps`` for scenarios whose return is a whole number in ``[0, episode_steps]`` (CartPole).
    integer_r_max: int | None
    #: ``dkw`` | ``integer`` | ``binary`` | ``percentile``.
    estimator: str

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def path(self) -> Path:
        return self.loaded.path


def _reference(path: Path) -> str:
    resolved = path.resolve()
    try:
        return os.path.relpath(resolved)
    except ValueError:  # another drive (Windows)
        return str(resolved)


def integer_return_max(scenario: ScenarioSpec) -> int | None:
    """``episode_steps`` when every return of the scenario is an integer in ``[0, episode_steps]``, else ``None``.

    CartPole pays +1 per step (``safetybed.sims.classic``), so its return is the episode length.
    """
    if scenario.simulator == "classic" and scenario.task == "cartpole":
        return int(scenario.episode_steps)
    return None


def resolve_certification(path: str | Path, *, backend: str | None = None) -> Certification:
    """Load a certification spec and everything it names; :class:`SpecError` (exit 2) on any problem."""
    from safetybed.sims import make_env
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.controller import load_controller_spec
    from safetybed.spec.planner import is_planner_spec

    loaded = load_certify_spec(path)
    spec = loaded.spec
    controller_path = loaded.controller_path()
    if is_planner_spec(controller_path):
        raise SpecError(loaded.path, "controller", f"{controller_path} is a test-time-adapting planner "
                        f"(algorithm = \"planner\"); certification refuses it: the adapt-then-act procedure is a "
                        f"valid base policy for the smoothing bound, but the attack sanity checks need a policy "
                        f"network and cannot run on it (safetybed.certify.pipeline docstring); a certificate of the "
                        f"trained weights would not describe the adapted controller either")
    controller_spec = load_controller_spec(controller_path)
    if controller_spec.spec.shield != "none":
        # The smoothed clean episodes would run shielded (the runner loads the spec), but the attack sanity checks
        # and `bench certify` act with the policy network alone: they would test another controller.
        raise SpecError(loaded.path, "controller", f"{controller_path}: shield = {controller_spec.spec.shield!r}: "
                        f"the attack checks run the policy network unshielded, so a shielded controller cannot be "
                        f"certified here; certify the unshielded spec (e.g. controllers/highway_sac.toml)")
    if not controller_spec.checkpoint_dir.exists():
        raise SpecError(loaded.path, "controller", f"{controller_path}: checkpoint folder "
                        f"{controller_spec.checkpoint_dir} does not exist; train it with safetybed train "
                        f"{controller_path}")
    checkpoint = load_checkpoint(controller_spec.checkpoint_dir)
    try:
        scenario, scenario_path = load_scenario_arg(loaded.scenario_ref())
    except SpecError as error:
        raise SpecError(loaded.path, "scenario", str(error)) from None
    scenario = with_backend(scenario, backend if backend is not None else loaded.spec.backend)
    if scenario.perturbations.observation_noise_std:
        raise SpecError(loaded.path, "scenario", f"{scenario.name!r} adds observation noise "
                        f"(observation_noise_std = {scenario.perturbations.observation_noise_std:g}); the "
                        f"certification adds the smoothing noise sigma itself, so give the noise-free scenario "
                        f"(e.g. classic/cartpole instead of classic/cartpole_noisy)")
    run_scenario = smoothed_scenario(scenario, sigma=spec.sigma)
    env = make_env(scenario)
    try:
        observation_shape = env.observation_space.shape
        return_range = tuple(float(v) for v in env.unwrapped.return_range)
    finally:
        env.close()
    if tuple(observation_shape) != (checkpoint.policy.arch.obs_dim,):
        raise SpecError(loaded.path, "controller", f"{controller_path} reads {checkpoint.policy.arch.obs_dim}-d "
                        f"observations but scenario {scenario.name!r} gives {observation_shape}")
    integer_r_max = integer_return_max(scenario)
    if spec.quantity == "expected_return":
        if spec.estimator == "integer" and integer_r_max is None:
            raise SpecError(loaded.path, "estimator", f"\"integer\" needs whole-number returns in [0, r_max] "
                            f"(CartPole); scenario {scenario.name!r} has real-valued returns: use \"dkw\" or \"auto\"")
        estimator = "integer" if spec.estimator in ("auto", "integer") and integer_r_max is not None else "dkw"
    elif spec.quantity == "percentile":
        estimator = "percentile"
    else:
        estimator = "binary"
    return Certification(loaded=loaded, controller_path=controller_path, controller_ref=_reference(controller_path),
                         checkpoint=checkpoint, deterministic=controller_spec.spec.deterministic,
                         scenario=scenario, scenario_path=Path(scenario_path), run_scenario=run_scenario,
                         frame_stack=frame_stack_of(scenario), return_range=return_range,
                         integer_r_max=integer_r_max, estimator=estimator)


# -- certificates -------------------------------------------------------------------------------------------
def certified_bound(cert: Certification, outcomes: dict[str, np.ndarray], budget: float) -> estimators.CertifiedBound:
    """The certificate of ``cert``'s quantity at one budget, from the clean episodes' ``outcomes``."""
    spec = cert.spec
    common = {"sigma": spec.sigma, "budget": float(budget), "alpha": spec.alpha}
    returns = outcomes["returns"]
    if cert.estimator == "integer":
        return estimators.expectation_bound_integer(np.round(returns), r_max=cert.integer_r_max, **common)
    if cert.estimator == "dkw":
        return estimators.expectation_bound_dkw(returns, r_min=cert.return_range[0], **common)
    if cert.estimator == "percentile":
        return estimators.percentile_bound(returns, p=spec.p, r_min=cert.return_range[0], **common)
    events = outcomes["no_collision"] if spec.quantity == "no_collision" else outcomes["success"]
    return estimators.binary_bound(int(events.sum()), int(events.size), **common)


def _clean_statistic(cert: Certification, outcomes: dict[str, np.ndarray]) -> dict[str, float]:
    """The plain (uncertified) estimate of the quantity on the clean smoothed episodes, with its SEM."""
    quantity = cert.spec.quantity
    if quantity == "percentile":
        values = np.sort(outcomes["returns"])
        return {"estimate": float(values[max(math.ceil(values.size * cert.spec.p - 1e-9), 1) - 1]), "sem": math.nan}
    values = outcomes["returns"] if quantity == "expected_return" else outcomes[quantity].astype(float)
    sem = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.inf
    return {"estimate": float(values.mean()), "sem": sem}


def _outcomes(records: list) -> dict[str, np.ndarray]:
    return {"returns": np.array([r.episode_return for r in records], dtype=float),
            "no_collision": np.array([not r.collision for r in records], dtype=bool),
            "success": np.array([r.success for r in records], dtype=bool)}


def _histogram(values: np.ndarray, *, bins: int = 40) -> dict[str, list[float]]:
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


# -- the clean smoothed episodes ----------------------------------------------------------------------------
def _matching_run(store: RunStore, *, scenario: ScenarioSpec, controller: str, seed: int, episodes: int,
                  weights_sha256: str) -> str | None:
    played_with = store.run_weights()  # a run played before the weights were retrained is never reused
    digest = scenario_digest(scenario)
    for info, _done in reversed(store.list_runs()):
        if (info.controller == controller and info.seed == seed and info.episodes == episodes
                and played_with.get(info.run_id) == weights_sha256
                # compared as validated specs, as resume_run does: a field added since (with its default) matches
                and scenario_digest(ScenarioSpec.model_validate_json(info.scenario_json)) == digest):
            return info.run_id
    return None


def run_clean_episodes(cert: Certification, *, store: RunStore, episodes: int, workers: int, executor: str = "local",
                       progress: ProgressCallback | None = None, allow_partial: bool = False) -> tuple[str, str]:
    """Play (or reuse, or finish) the run of clean smoothed episodes; returns ``(run_id, how)``.

    ``how`` is ``"new"``, ``"resumed"`` or ``"reused"``. A run is reused only if it has the same smoothed
    scenario, controller reference, seed and episode count and was played with the same weights (sha256).
    A run that ends incomplete raises :class:`IncompleteRunError` unless ``allow_partial``.
    """
    weights_sha256 = cert.checkpoint.weights_sha256
    existing = _matching_run(store, scenario=cert.run_scenario, controller=cert.controller_ref,
                             seed=cert.spec.seed, episodes=episodes, weights_sha256=weights_sha256)
    try:
        if existing is not None:
            if store.completeness(existing).complete:
                if progress:
                    progress(episodes, episodes)
                return existing, "reused"
            return resume_run(existing, store=store, workers=workers, executor=executor,
                              progress=progress), "resumed"
        run_id = start_run(cert.run_scenario, scenario_path=cert.scenario_path, controller=cert.controller_ref,
                           episodes=episodes, seed=cert.spec.seed, workers=workers, executor=executor, store=store,
                           progress=progress,
                           on_created=lambda created: store.record_weights(created, weights_sha256))
    except IncompleteRunError as error:
        if not allow_partial:
            raise
        return error.run_id, "partial"
    return run_id, "new"


# -- attacks ------------------------------------------------------------------------------------------------
class _OutcomeRecorder(gym.Wrapper):
    """Remembers whether its episode collided / succeeded (the attack returns only returns and lengths)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.collision = False
        self.success = False

    def reset(self, **kwargs: Any):
        self.collision = self.success = False
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.collision = self.collision or bool(info["safety"]["collision"])
        self.success = bool(info["safety"]["success"])
        return obs, reward, terminated, truncated, info


def attack_configurations(attack: AttackSpec, *, discrete: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``[attack]`` configurations that apply to the controller, and notes on those skipped."""
    configurations: list[dict[str, Any]] = []
    skipped: list[str] = []
    for rule in attack.spend_rules:
        if rule == "flip":
            if not discrete:
                skipped.append("spend_rule 'flip' skipped: it needs discrete actions")
                continue
            configurations += [{"spend_rule": "flip", "min_log_prob_gap": float(gap)}
                               for gap in attack.min_log_prob_gaps]
        else:
            configurations += [{"spend_rule": "fraction", "spend_fraction": float(fraction)}
                               for fraction in attack.spend_fractions]
            if attack.action_targets and discrete:
                skipped.append("action_targets skipped: they push continuous actions")
            elif attack.action_targets:
                configurations += [{"spend_rule": "fraction", "spend_fraction": float(fraction),
                                    "action_target": [float(v) for v in target]}
                                   for target in attack.action_targets for fraction in attack.spend_fractions]
    return configurations, skipped


def _attacked_statistic(quantity: str, values: np.ndarray, p: float | None) -> dict[str, float]:
    """Attacked estimate, its SEM and the upper confidence bound the check compares with the certificate."""
    n = values.size
    if quantity == "percentile":
        ordered = np.sort(values)
        estimate = float(ordered[max(math.ceil(n * p - 1e-9), 1) - 1])
        # Distribution-free upper bound on the p-quantile: X_(k), k the smallest index with
        # P[Binomial(n, p) <= k - 1] >= level (then P[X_(k) < q_p] <= 1 - level).
        level = stats.norm.cdf(CHECK_SIGMAS)
        k = int(np.searchsorted(stats.binom.cdf(np.arange(n), n, p), level) + 1)
        upper = float(ordered[k - 1]) if k <= n else math.inf
        return {"estimate": estimate, "sem": math.nan, "upper": upper}
    sem = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    mean = float(values.mean())
    return {"estimate": mean, "sem": sem, "upper": mean + CHECK_SIGMAS * sem}


def run_attack(cert: Certification, *, budget: float, configuration: dict[str, Any], episodes: int,
               sigma: float | None) -> dict[str, Any]:
    """One attack configuration at one budget; returns the JSON-able summary for ``certificate.json``."""
    from safetybed.certify.attack import attack_episodes
    from safetybed.sims import make_env

    attack = cert.spec.attack
    scenario = cert.scenario
    options: dict[str, Any] = {}
    if cert.frame_stack > 1:
        options["frame_stack"] = cert.frame_stack
        scenario = scenario.model_copy(update={"perturbations": scenario.perturbations.model_copy(
            update={"frame_stack": 1})})
    scenario_json = scenario.model_dump_json()
    envs: list[_OutcomeRecorder] = []

    def factory() -> gym.Env:
        envs.append(_OutcomeRecorder(make_env(ScenarioSpec.model_validate_json(scenario_json))))
        return envs[-1]

    started = time.perf_counter()
    with torch_threads(1):
        result = attack_episodes(policy=cert.checkpoint.policy, obs_norm=cert.checkpoint.obs_norm, scenario=factory,
                                 sigma=sigma, budget=float(budget), episodes=episodes, seed=attack.seed,
                                 pgd_steps=attack.pgd_steps, noise_samples=attack.noise_samples, **configuration,
                                 **options)
    quantity = cert.spec.quantity
    if quantity in ("expected_return", "percentile"):
        values = np.asarray(result.returns, dtype=float)
    elif quantity == "no_collision":
        values = np.array([not env.collision for env in envs], dtype=float)
    else:
        values = np.array([env.success for env in envs], dtype=float)
    return {"budget": float(budget), "sigma": sigma, "configuration": configuration, "episodes": result.n,
            **_attacked_statistic(quantity, values, cert.spec.p), "mean_return": result.mean,
            "budget_spent_mean": result.budget_spent_mean, "budget_spent_max": result.budget_spent_max,
            "attacked_steps_mean": float(np.mean(result.attacked_steps)), "method": result.method,
            "wall_time_s": time.perf_counter() - started}


def run_attacks(cert: Certification, certified: dict[float, float], *, episodes: int,
                progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Every configuration at every budget, the per-budget worst case and its check, and the unsmoothed control."""
    attack = cert.spec.attack
    discrete = cert.checkpoint.policy.arch.kind == "categorical"
    configurations, skipped = attack_configurations(attack, discrete=discrete)
    summary: dict[str, Any] = {"episodes": episodes, "settings": attack.model_dump(), "configurations": configurations,
                               "skipped": skipped, "check": f"attacked estimate + {CHECK_SIGMAS:g} SEM >= certificate "
                               f"(percentile: upper {stats.norm.cdf(CHECK_SIGMAS):.5f} confidence bound)",
                               "per_budget": [], "runs": [], "control": None, "violations": [],
                               "configurations_tried": 0, "attacked_episodes": 0}
    if episodes == 0 or not configurations:
        summary["not_run"] = ("not run: [attack] episodes = 0" if episodes == 0
                              else "not run: no attack configuration applies to this controller")
        return summary
    total = len(certified) * len(configurations) + 1
    done = 0
    for budget, bound in certified.items():
        runs = []
        for configuration in configurations:
            runs.append(run_attack(cert, budget=budget, configuration=configuration, episodes=episodes,
                                   sigma=cert.spec.sigma))
            done += 1
            if progress:
                progress(done, total)
        worst = min(runs, key=lambda run: run["estimate"])
        passed = bool(worst["upper"] >= bound - 1e-9)
        row = {"budget": budget, "certified": bound, "attacked": worst["estimate"], "attacked_sem": worst["sem"],
               "attacked_upper": worst["upper"], "worst_configuration": worst["configuration"], "pass": passed}
        summary["per_budget"].append(row)
        summary["runs"] += runs
        if not passed:
            summary["violations"].append(row)
    largest = max(certified)
    control_configuration = configurations[0]
    summary["control"] = run_attack(cert, budget=largest, configuration=control_configuration, episodes=episodes,
                                    sigma=None)
    summary["control"]["note"] = ("the unsmoothed base controller under the same attack at the largest budget: "
                                  "shows the attack has teeth (no certificate applies to it)")
    if progress:
        progress(total, total)
    summary["configurations_tried"] = len(certified) * len(configurations) + 1
    summary["attacked_episodes"] = summary["configurations_tried"] * episodes
    return summary


# -- provenance ---------------------------------------------------------------------------------------------
def package_versions(simulator: str) -> dict[str, str]:
    """Versions of Python and of the packages a certificate depends on."""
    names = ["torch", "numpy", "scipy", "gymnasium", "pydantic"]
    names += {"highway": ["highway-env"], "bullet": ["pybullet", "panda-gym"], "classic": []}[simulator]
    versions = {"safetybed": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# -- the command ------------------------------------------------------------------------------------------
def certify_from_spec(path: str | Path, *, episodes: int | None = None, attack_episodes: int | None = None,
                      store_path: str | Path | None = None, workers: int = 1,
                      executor: str = "local", progress: ProgressFactory | None = None,
                      allow_partial: bool = False, backend: str | None = None) -> dict[str, Any]:
    """Run a certification spec end to end and return the certificate (the content of ``certificate.json``).

    Nothing but the run store is written: :func:`safetybed.report.certificate.write_certificate` writes
    ``certificate.json`` and ``report.html`` (``safetybed certify`` does both, see ``certify_to_folder``).

    Args:
        path: the certification spec (``certify/*.toml``).
        episodes: clean smoothed episodes (default: the spec's ``episodes``).
        attack_episodes: episodes per attack configuration and budget (default: the spec's ``[attack]
            episodes``; 0 skips the attacks).
        store_path: SQLite run store (default ``runs/safetybed.sqlite``).
        workers / executor: how the runner plays the clean episodes (results do not depend on them).
        progress: ``progress(description)`` returns a context manager yielding a ``(done, total)`` callback
            or ``None`` (the CLI's ``progress_bar``).
        allow_partial: certify from an incomplete run of clean episodes (some failed or were lost) instead of
            refusing; the certificate then names the missing indices under ``samples.completeness`` and is
            valid only if those episodes are missing for reasons unrelated to their outcome.
        backend: run the clean episodes on this simulator backend (``None``: the scenario's own).

    Returns:
        The certificate, identified by ``certificate_id`` (a digest of its content).

    Raises:
        SpecError / InputError: a bad spec, reference, flag or store (exit code 2).
        IncompleteRunError: the clean run lacks planned episodes and ``allow_partial`` is false (exit code 1).
    """
    from safetybed.certify.reference import published_reference
    from safetybed.runner import DEFAULT_STORE

    started = time.perf_counter()
    cert = resolve_certification(path, backend=backend)
    spec = cert.spec
    n_planned = spec.episodes if episodes is None else int(episodes)
    if n_planned < 2:
        raise InputError(f"--episodes: expected >= 2, got {n_planned}")
    n_attack = spec.attack.episodes if attack_episodes is None else int(attack_episodes)
    if n_attack < 0 or n_attack == 1:
        raise InputError(f"--attack-episodes: expected 0 (no attacks) or >= 2, got {n_attack}")
    store_file = Path(store_path) if store_path is not None else DEFAULT_STORE
    progress = progress or (lambda _name: nullcontext(None))

    with RunStore(store_file) as store:
        with progress(f"certify {spec.name}: clean smoothed episodes") as callback:
            run_id, how = run_clean_episodes(cert, store=store, episodes=n_planned, workers=workers,
                                             executor=executor, progress=callback, allow_partial=allow_partial)
        records = stored_episodes(store, run_id, allow_partial=allow_partial)
        completeness = store.completeness(run_id)
    outcomes = _outcomes(records)
    budgets = [float(b) for b in spec.budgets]
    results = {budget: certified_bound(cert, outcomes, budget) for budget in budgets}
    at_zero = certified_bound(cert, outcomes, 0.0)
    curve_budgets = sorted(set(np.linspace(0.0, max(budgets), CURVE_POINTS).round(10).tolist()) | set(budgets))
    curve = [certified_bound(cert, outcomes, budget).bound for budget in curve_budgets]
    clean = _clean_statistic(cert, outcomes)

    with progress(f"certify {spec.name}: attacks") as callback:
        attacks = run_attacks(cert, {b: r.bound for b, r in results.items()}, episodes=n_attack, progress=callback)

    manifest = cert.checkpoint.manifest
    certificate: dict[str, Any] = {
        "format": FORMAT,
        "certificate_id": "",
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "name": spec.name,
        "description": spec.description,
        "spec": {"path": str(cert.path), "sha256": sha256_file(cert.path), "content": spec.model_dump()},
        "guarantee": (f"With probability >= {1 - spec.alpha:g} over the {len(records)} sampled episodes, for every "
                      f"adaptive adversary whose observation perturbations over an episode have total l2 norm "
                      f"sqrt(sum_t ||delta_t||^2) <= B (observation units), the smoothed controller's "
                      f"{_quantity_words(spec.quantity, spec.p)} is at least the certified value at B "
                      f"(Kumar, Levine & Feizi 2022). It holds for the scenario's start-state distribution and "
                      f"dynamics as run here."),
        "quantity": spec.quantity,
        "p": spec.p,
        "estimator": cert.estimator,
        "method": at_zero.method,
        "alpha": spec.alpha,
        "confidence": 1 - spec.alpha,
        "sigma": spec.sigma,
        "smoothing": {"sigma": spec.sigma, "frame_stack": cert.frame_stack,
                      "noise": "fresh N(0, sigma^2 I) on every raw observation at every step, before frame stacking "
                               "and observation normalisation, not clipped",
                      "applied_by": "the scenario's perturbations.observation_noise_std (runner episodes); equal in "
                                    "distribution to SmoothedController on the noise-free scenario"},
        "controller": {"spec": cert.controller_ref, "checkpoint": _reference(cert.checkpoint.path),
                       "weights_sha256": cert.checkpoint.weights_sha256, "algorithm": manifest.get("algorithm"),
                       "deterministic": cert.deterministic, "policy": manifest.get("policy"),
                       "trained_with_observation_noise_std": manifest.get("train", {}).get("observation_noise_std")},
        "scenario": {"name": cert.scenario.name, "path": str(cert.scenario_path), "simulator": cert.scenario.simulator,
                     "task": cert.scenario.task, "episode_steps": cert.scenario.episode_steps,
                     "return_range": list(cert.return_range), "integer_r_max": cert.integer_r_max,
                     "spec": cert.scenario.model_dump(), "run_spec_sha256": hashlib.sha256(
                         cert.run_scenario.model_dump_json().encode()).hexdigest()},
        "samples": {"episodes": len(records), "planned": n_planned, "spec_episodes": spec.episodes,
                    "run_id": run_id, "run": how, "run_seed": spec.seed, "store": str(store_file),
                    "workers": workers, "executor": executor, "completeness": completeness.to_json_dict()},
        "clean": {"estimate": clean["estimate"], "sem": clean["sem"], "mean_return": float(outcomes["returns"].mean()),
                  "return_std": float(outcomes["returns"].std(ddof=1)),
                  "return_min": float(outcomes["returns"].min()), "return_max": float(outcomes["returns"].max()),
                  "no_collision_rate": float(outcomes["no_collision"].mean()),
                  "success_rate": float(outcomes["success"].mean()),
                  "certified_at_zero": at_zero.bound, "histogram": _histogram(outcomes["returns"])},
        "certified": [{"budget": b, "budget_over_sigma": round(b / spec.sigma, 12), "certified": r.bound, "estimate": r.estimate,
                       "n": r.n, "method": r.method} for b, r in results.items()],
        "curve": {"budgets": curve_budgets, "certified": curve},
        "attacks": attacks,
        "violations": len(attacks["violations"]),
        "reference": published_reference(cert.scenario.simulator, cert.scenario.task, spec.sigma, spec.quantity,
                                         cert.scenario.episode_steps),
        "versions": package_versions(cert.scenario.simulator),
    }
    if not completeness.complete:  # only with allow_partial: say so where a reader of the certificate looks
        certificate["caveat"] = (f"computed from an incomplete run (--allow-partial): {completeness.describe()}; "
                                 "the bound holds only if these episodes are missing for reasons unrelated to "
                                 "their outcome")
    certificate = json_safe(certificate)
    certificate["certificate_id"] = certificate_digest(certificate)[:16]
    certificate["wall_time_s"] = time.perf_counter() - started
    return certificate


def attack_from_spec(path: str | Path, *, budget: float, episodes: int | None = None,
                     progress: ProgressFactory | None = None) -> dict[str, Any]:
    """``safetybed attack CERT_SPEC --budget B``: every ``[attack]`` configuration at one budget, plus the control.

    No certificate is computed (``safetybed certify`` does that); the result lists each configuration's
    attacked estimate of the spec's quantity with its SEM, the worst one, and the unsmoothed controller.
    """
    if not (math.isfinite(budget) and budget >= 0):
        raise InputError(f"--budget: expected a finite value >= 0 (total l2 norm, observation units), got {budget}")
    cert = resolve_certification(path)
    n_attack = cert.spec.attack.episodes if episodes is None else int(episodes)
    if n_attack < 2:
        raise InputError(f"--episodes: expected >= 2, got {n_attack}")
    configurations, skipped = attack_configurations(cert.spec.attack, discrete=cert.checkpoint.policy.arch.kind
                                                    == "categorical")
    if not configurations:
        raise InputError(f"{cert.path}: attack: no configuration applies to this controller ({'; '.join(skipped)})")
    progress = progress or (lambda _name: nullcontext(None))
    runs = []
    with progress(f"attack {cert.spec.name} at B = {budget:g}") as callback:
        for k, configuration in enumerate(configurations):
            runs.append(run_attack(cert, budget=budget, configuration=configuration, episodes=n_attack,
                                   sigma=cert.spec.sigma))
            if callback:
                callback(k + 1, len(configurations) + 1)
        control = run_attack(cert, budget=budget, configuration=configurations[0], episodes=n_attack, sigma=None)
        if callback:
            callback(len(configurations) + 1, len(configurations) + 1)
    worst = min(runs, key=lambda run: run["estimate"])
    return json_safe({"name": cert.spec.name, "quantity": cert.spec.quantity, "sigma": cert.spec.sigma,
                      "budget": budget, "episodes": n_attack, "runs": runs, "skipped": skipped, "worst": worst,
                      "control": control, "controller_weights_sha256": cert.checkpoint.weights_sha256})


def _quantity_words(quantity: str, p: float | None) -> str:
    return {"expected_return": "expected episode return",
            "no_collision": "probability of an episode without collision",
            "success": "probability of success",
            "percentile": f"{p:g}-quantile of the episode return" if p is not None else "quantile"}[quantity]
