//! Turning the scenario's faults into events: which agents sit behind a partition or a NAT, when
//! replicas crash or roll, whose API servers are slow, and the Poisson processes of connection drops
//! and agent restarts.

use rand::Rng;

use super::clock::SimTime;
use super::net::Window;
use super::scenario::Fault;
use super::world::{Ev, World};

impl World {
    pub(super) fn schedule_faults(&mut self) {
        let faults = self.sc.faults.clone();
        for (x, f) in faults.iter().enumerate() {
            match f {
                Fault::Drop(d) => {
                    let rate = d.rate_per_hour / 3600.0 * self.agents.len() as f64;
                    let at = SimTime::from_duration(d.from).plus(self.exp(rate));
                    if at < SimTime::from_duration(d.to) {
                        self.queue.push(at, Ev::DropTick { fault: x });
                    }
                }
                Fault::Partition(p) => {
                    let w = Window {
                        from: SimTime::from_duration(p.at),
                        to: SimTime::from_duration(p.at + p.duration),
                    };
                    let mut n = 0u64;
                    for a in &mut self.agents {
                        if self.rng.random_bool(p.fraction) {
                            a.faults.partitions.push((w, p.kas));
                            n += 1;
                        }
                    }
                    self.metrics.fault_targets.push((f.name(), n));
                }
                Fault::NatTimeout(nf) => {
                    let w = Window {
                        from: SimTime::from_duration(nf.from),
                        to: SimTime::from_duration(nf.to),
                    };
                    let mut n = 0u64;
                    for a in &mut self.agents {
                        if self.rng.random_bool(nf.fraction) {
                            a.faults.nat.push((w, nf.idle_timeout));
                            n += 1;
                        }
                    }
                    self.metrics.fault_targets.push((f.name(), n));
                }
                Fault::KasCrash(c) => {
                    self.queue.push(
                        SimTime::from_duration(c.at),
                        Ev::KasCrash {
                            kas: c.kas,
                            fault: x,
                        },
                    );
                }
                Fault::RollingRestart(r) => {
                    self.queue.push(
                        SimTime::from_duration(r.at),
                        Ev::RollingBegin { kas: 0, fault: x },
                    );
                }
                Fault::SlowApi(sa) => {
                    let w = Window {
                        from: SimTime::from_duration(sa.from),
                        to: SimTime::from_duration(sa.to),
                    };
                    let mut n = 0u64;
                    for a in &mut self.agents {
                        if self.rng.random_bool(sa.fraction) {
                            a.slow_api.push((w, sa.factor));
                            n += 1;
                        }
                    }
                    self.metrics.fault_targets.push((f.name(), n));
                }
                Fault::AgentRestarts(a) => {
                    let rate = a.rate_per_hour / 3600.0 * self.agents.len() as f64;
                    let at = SimTime::from_duration(a.from).plus(self.exp(rate));
                    if at < SimTime::from_duration(a.to) {
                        self.queue.push(at, Ev::RestartTick { fault: x });
                    }
                }
            }
        }
    }

    /// A random established connection breaks.
    pub(super) fn drop_tick(&mut self, x: usize) {
        let Some(Fault::Drop(d)) = self.sc.faults.get(x).cloned() else {
            return;
        };
        let rate = d.rate_per_hour / 3600.0 * self.agents.len() as f64;
        let next = self.now.plus(self.exp(rate));
        if next < SimTime::from_duration(d.to) {
            self.queue.push(next, Ev::DropTick { fault: x });
        }
        let i = self.rng.random_range(0..self.agents.len());
        let silent = self.rng.random_bool(d.silent);
        let Some(fid) = self.agents[i].connected_flow() else {
            return;
        };
        self.metrics.drops += 1;
        if silent {
            if let Some(f) = self.flows.get_mut(&fid) {
                f.link.kill();
            }
            self.note(format_args!("drop-silent a={i} f={fid}"));
        } else {
            // A middlebox resets the connection: both ends get RST.
            self.send_signal(fid, super::net::Dir::Up, true);
            self.send_signal(fid, super::net::Dir::Down, true);
            self.note(format_args!("drop-rst a={i} f={fid}"));
        }
    }

    /// A random agent restarts.
    pub(super) fn restart_tick(&mut self, x: usize) {
        let Some(Fault::AgentRestarts(a)) = self.sc.faults.get(x).cloned() else {
            return;
        };
        let rate = a.rate_per_hour / 3600.0 * self.agents.len() as f64;
        let next = self.now.plus(self.exp(rate));
        if next < SimTime::from_duration(a.to) {
            self.queue.push(next, Ev::RestartTick { fault: x });
        }
        let i = self.rng.random_range(0..self.agents.len());
        self.agent_crash(i, a.down_for);
    }
}
