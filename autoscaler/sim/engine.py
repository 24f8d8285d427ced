"""The simulation's step loop: a fluid model of a Ray cluster running one pipeline chain, stepped in fixed
steps. Each step: due node events, slot placement, processing in chain order; every ``decision_interval`` a
snapshot goes through ``decide`` — the daemon's own function — and the plan is applied to the cluster.
Everything random comes from the scenario seed, so a run is a pure function of (scenario, policy)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.policy_api import Policy
from autoscaler.core.throughput import ThroughputModels
from autoscaler.sim.cluster import Cluster
from autoscaler.sim.observe import Observer
from autoscaler.sim.pipeline import PipelineModel
from autoscaler.sim.records import SimDecision, SimRun
from autoscaler.sim.scenario import SimScenario, lognormal_noise
from autoscaler.types import Snapshot

__all__ = ["DecideFn", "Simulation", "simulate"]

DecideFn = Callable[[Snapshot, Config, ThroughputModels, Policy, DecisionState], Decision]
"""The signature of ``autoscaler.core.decide.decide`` (injectable, e.g. to time it)."""

_NO_POOL_POLICIES = frozenset({"ray-default"})
"""Policies that stand for Ray without raytide: no warm pool for them, whatever the configuration says."""

_EPS = 1e-9


class Simulation:
    """One run of one policy on one scenario. ``run()`` may be called once."""

    def __init__(
        self,
        scenario: SimScenario,
        policy: Policy,
        *,
        models: ThroughputModels | None = None,
        progress: Callable[[float, float], None] | None = None,
        decide_fn: DecideFn = decide,
    ) -> None:
        self.scenario = scenario
        self.decide_fn = decide_fn
        self.policy = policy
        self.models = models if models is not None else ThroughputModels()
        self.progress = progress
        self.config = scenario.config
        cfg = scenario.config
        self.dt = scenario.step_seconds
        self.n_steps = scenario.steps
        self.shapes = cfg.node_shapes()
        self.chain = scenario.chain()
        S, K = len(self.shapes), len(self.chain)
        self.S, self.K = S, K
        world = {w.name: w for w in scenario.world.stages}

        seeds = np.random.SeedSequence(scenario.seed).spawn(3 + K + S)
        rng_trace = np.random.default_rng(seeds[0])
        self.trace_rate = scenario.trace.rates(self.n_steps, self.dt, scenario.start_clock, rng_trace)
        noise = np.ones((K, self.n_steps))
        for k, name in enumerate(self.chain):
            w = world[name]
            rng = np.random.default_rng(seeds[3 + k])
            noise[k] = lognormal_noise(rng, self.n_steps, self.dt, w.noise_sigma, w.noise_seconds)
        self.pipeline = PipelineModel(scenario, self.shapes, self.chain, noise)
        self.cluster = Cluster(scenario, [np.random.default_rng(seeds[3 + K + si]) for si in range(S)])
        # The daemon's rate window, in steps: what the snapshots' rates and averaged gauges span.
        self.window_steps = max(1, round(cfg.prometheus.rate_window_seconds / self.dt))
        self.observer = Observer(scenario, self.cluster, self.pipeline, self.window_steps)
        self.pool_on = cfg.warm_pool.enabled and policy.name not in _NO_POOL_POLICIES
        self.used = False

    def run(self) -> SimRun:
        if self.used:
            raise RuntimeError("a Simulation runs once; make a new one")
        self.used = True
        wall0 = time.perf_counter()
        sc = self.scenario
        S, K, dt, n = self.S, self.K, self.dt, self.n_steps
        pipe, cluster = self.pipeline, self.cluster
        tab = cluster.table
        by_shape = cluster.by_shape
        cluster.start()

        arrived = np.zeros((K, n))
        processed = np.zeros((K, n))
        queued = np.zeros((K, n))
        live_rec = np.zeros((n, S), dtype=np.int64)
        billed_rec = np.zeros((n, S), dtype=np.int64)
        slo_miss = np.zeros(n, dtype=np.bool_)
        gpu_busy_rec = np.zeros(n)
        gpu_live_rec = np.zeros(n)
        gpu_queued = np.zeros(n, dtype=np.bool_)
        gpu_bound_queued = np.zeros(n, dtype=np.bool_)
        cum_a = np.zeros((K, n + 1))
        cum_d = np.zeros((K, n + 1))
        # Busy slot-seconds per (stage, shape), for snapshots that average busy slots over the window.
        window_mean = sc.world.busy_slots == "window_mean"
        cum_busy = np.zeros((n + 1, K, S)) if window_mean else None
        busy_acc = [[0.0] * S for _ in range(K)]

        drain_target = sc.config.targets.drain_seconds
        q_threshold = sc.world.queued_threshold
        cap, need = pipe.cap, pipe.need
        R = len(pipe.resources)
        gi = pipe.gpu_index
        trace_units = self.trace_rate * dt
        noise = pipe.noise
        q = [0.0] * K
        inflow_prev = [0.0] * K
        x_prev_total = [1.0] * K
        ca = [0.0] * K
        cd = [0.0] * K
        # Per-step results the snapshot reads.
        busy_slots = [[0.0] * S for _ in range(K)]
        unplaced = [0] * K
        placed_total = [0] * K
        billed_now = [0] * S
        spd = sc.steps_per_decision
        reserve = pipe.ratio > 0
        own: list[list[float]] = []
        shared: list[float] = []
        state = DecisionState()
        decisions: list[SimDecision] = []
        next_event = cluster.next_event()
        billed_dirty = True

        for i in range(n):
            t = i * dt
            if t + _EPS >= next_event:
                cluster.events(t)
                next_event = cluster.next_event()
                billed_dirty = True
            if billed_dirty:
                billed_now = cluster.billed()
                billed_dirty = False
            n_live = [len(st.live) for st in by_shape]
            free = [[n_live[si] * cap[si][j] for j in range(R)] for si in range(S)]

            # -- placement: GPU stages first, each for its queue plus the input it had last step
            first_in = float(trace_units[i])
            x = [[0] * S for _ in range(K)]
            if reserve:
                # Ray Data's reservation: each stage within its own reserved share first, then the
                # shared rest split among the stages that still have work.
                own, shared = pipe.reservations(n_live)
                rem = [0.0] * K
                for k in pipe.place_order:
                    est = q[k] + (first_in if k == 0 else inflow_prev[k])
                    if est > _EPS:
                        rem[k] = pipe.place(k, est, i, free, n_live, x[k], x_prev_total[k], own[k])
                pipe.share(rem, i, free, n_live, x, x_prev_total, own, shared)
            else:
                for k in pipe.place_order:
                    est = q[k] + (first_in if k == 0 else inflow_prev[k])
                    if est > _EPS:
                        pipe.place(k, est, i, free, n_live, x[k], x_prev_total[k])

            # -- processing, in chain order
            inflow = first_in
            miss = False
            gq = False
            gbq = False
            gpu_busy = 0.0
            for k in range(K):
                xk = x[k]
                avail = q[k] + inflow
                cap_rate = pipe.capacity(k, i, xk)
                unplaced[k] = 0
                if avail > cap_rate * dt * (1.0 + 1e-9) + _EPS:
                    # More arrived than last step's input suggested: Ray schedules more tasks as blocks
                    # arrive, on whatever is still free (within its reservation and the shared pool).
                    more = avail - cap_rate * dt
                    if reserve:
                        left_over = pipe.spend(
                            k, more, i, free, n_live, xk, x_prev_total[k], own[k], shared, shared[:]
                        )
                    else:
                        left_over = pipe.place(k, more, i, free, n_live, xk, x_prev_total[k])
                    cap_rate = pipe.capacity(k, i, xk)
                    if left_over > _EPS:
                        per_slot = max(1.0, pipe.best_rate[k] * noise[k, i] * dt)
                        room = pipe.max_slots[k] - sum(xk)
                        unplaced[k] = int(max(0.0, min(math.ceil(left_over / per_slot - 1e-7), room)))
                tot = sum(xk)
                placed_total[k] = tot
                if tot > 0:
                    x_prev_total[k] = float(tot)
                done = min(avail, cap_rate * dt)
                left = avail - done
                if left < 1e-12:
                    left = 0.0
                util = done / (cap_rate * dt) if cap_rate > 0 else 0.0
                bk = busy_slots[k]
                acc = busy_acc[k]
                for si in range(S):
                    bk[si] = xk[si] * util
                    acc[si] += bk[si] * dt
                if pipe.is_gpu[k] and gi is not None:
                    gpu_busy += sum(bk[si] for si in range(S)) * need[k][gi]
                arrived[k, i] = inflow
                processed[k, i] = done
                queued[k, i] = left
                ca[k] += inflow
                cd[k] += done
                cum_a[k, i + 1] = ca[k]
                cum_d[k, i + 1] = cd[k]
                if left > _EPS and left > drain_target * done / dt:
                    miss = True
                if pipe.gpu_bound[k] and left > q_threshold:
                    gbq = True
                    if pipe.is_gpu[k]:
                        gq = True
                inflow_prev[k] = inflow
                q[k] = left
                inflow = done * pipe.sel[k]

            slo_miss[i] = miss
            if cum_busy is not None:
                cum_busy[i + 1] = busy_acc
            gpu_queued[i] = gq
            gpu_bound_queued[i] = gbq
            gpu_busy_rec[i] = gpu_busy
            if gi is not None:
                gpu_live_rec[i] = sum(n_live[si] * cap[si][gi] for si in range(S))
            live_rec[i] = n_live
            billed_rec[i] = billed_now

            # -- which nodes were busy: the placed slots packed onto the first nodes of each shape
            t_end = t + dt
            for si in range(S):
                if not n_live[si]:
                    continue
                b = 0
                cs = cap[si]
                fs = free[si]
                for j in range(R):
                    if cs[j] > 0:
                        used = n_live[si] * cs[j] - fs[j]
                        if used > _EPS:
                            b = max(b, math.ceil(used / cs[j] - 1e-7))
                if b:
                    ids = by_shape[si].live_ids()
                    tab.last_busy[ids[: min(b, n_live[si])]] = t_end

            # -- decision
            if (i + 1) % spd == 0 and i + 1 < n:
                observed = busy_slots
                if cum_busy is not None:
                    lo = max(0, i + 1 - self.window_steps)
                    observed = ((cum_busy[i + 1] - cum_busy[lo]) / ((i + 1 - lo) * dt)).tolist()
                snap = self.observer.snapshot(
                    t_end, i, q, observed, busy_slots, unplaced, placed_total, cum_a, cum_d
                )
                rec, state = self._decide(snap, state)
                decisions.append(rec)
                cluster.apply(rec.target, rec.current, t_end)
                if self.pool_on and not rec.held:
                    cluster.size_pool(rec.target, t_end)
                next_event = cluster.next_event()
                billed_dirty = True
                if self.progress is not None:
                    self.progress(t_end, n * dt)
        if self.progress is not None:
            self.progress(n * dt, n * dt)
        return SimRun(
            scenario=sc,
            policy=self.policy.name,
            dt=dt,
            stages=self.chain,
            gpu_stages=pipe.gpu_stages,
            shapes=self.shapes,
            arrived=arrived,
            processed=processed,
            queued=queued,
            live=live_rec,
            billed=billed_rec,
            slo_miss=slo_miss,
            gpu_busy=gpu_busy_rec,
            gpu_live=gpu_live_rec,
            gpu_queued=gpu_queued,
            gpu_bound_queued=gpu_bound_queued,
            nodes=tab.log(),
            decisions=tuple(decisions),
            wall_seconds=time.perf_counter() - wall0,
        )

    def _decide(self, snap: Snapshot, state: DecisionState) -> tuple[SimDecision, DecisionState]:
        current = snap.counts_including_pending()
        try:
            d = self.decide_fn(snap, self.config, self.models, self.policy, state)
        except Exception as e:  # a failing policy is held, as the daemon fails static
            rec = SimDecision(
                time=snap.time,
                current=MappingProxyType(current),
                target=MappingProxyType(dict(current)),
                proposed=MappingProxyType(dict(current)),
                held=True,
                demand=MappingProxyType({}),
                error=f"{type(e).__name__}: {e}",
            )
            return rec, state
        plan = d.plan
        target = plan.targets()
        proposed = {c.shape: (c.proposed if c.proposed is not None else c.target) for c in plan.changes}
        rec = SimDecision(
            time=snap.time,
            current=MappingProxyType(current),
            target=MappingProxyType(target),
            proposed=MappingProxyType(proposed),
            held=plan.held,
            demand=MappingProxyType({dm.stage: dm.target_rate for dm in plan.demands}),
        )
        return rec, d.state


def simulate(
    scenario: SimScenario,
    policy: Policy,
    *,
    progress: Callable[[float, float], None] | None = None,
    models: ThroughputModels | None = None,
    decide_fn: DecideFn = decide,
) -> SimRun:
    """Run ``policy`` on ``scenario`` and return the raw run (see ``autoscaler.sim.results.summarize``)."""
    return Simulation(scenario, policy, models=models, progress=progress, decide_fn=decide_fn).run()
