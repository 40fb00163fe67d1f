//! Stopping: one service (signal, then SIGKILL after its wait) and the whole environment in
//! reverse dependency order.

use super::*;

impl Supervisor {
    /// Sends the termination signal to a service's process group and arms the SIGKILL timer;
    /// a service that is not running gets `after` applied at once.
    pub(super) fn stop(&mut self, idx: usize, after: AfterStop) {
        let s = &mut self.services[idx];
        if s.lingering.is_some() {
            if decide::stop_request_wins(s.after_stop.as_ref(), &after, &AfterStop::Stay) {
                s.after_stop = Some(after);
            }
            return;
        }
        match s.pid {
            Some(pid) => {
                if s.state == ServiceState::Stopping {
                    // Already stopping: a later "stay stopped" wins over a restart.
                    if decide::stop_request_wins(s.after_stop.as_ref(), &after, &AfterStop::Stay) {
                        s.after_stop = Some(after);
                    }
                    return;
                }
                if let Some(task) = s.health_task.take() {
                    task.abort();
                }
                s.after_stop = Some(after);
                let sig = s.spec.termination.signal;
                let wait = s.spec.termination.wait;
                s.set_state(ServiceState::Stopping, format!("sent {sig}"));
                if let Err(e) = killpg(pid, sig) {
                    crate::debug!("killpg({pid}, {sig}): {e}");
                }
                self.timer(idx, wait, TimerKind::Kill);
            }
            None => {
                s.timer_pending = false;
                s.generation = self.next_generation;
                self.next_generation += 1;
                s.apply_after_stop(after, "stopped", false);
                if s.removed {
                    self.services.retain(|s| !s.removed || s.pid.is_some());
                }
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self) {
        if self.phase.stopping() {
            return;
        }
        crate::info!("stopping the environment");
        self.phase = Phase::Stopping { forced: false };
        for s in &mut self.services {
            if s.pid.is_none() && matches!(s.state, ServiceState::Pending | ServiceState::Backoff) {
                s.timer_pending = false;
                s.set_state(ServiceState::Stopped, "environment stopping");
            }
        }
        if let Some(main) = &self.main {
            if main.exit.is_none() {
                let _ = killpg(main.pid, Signal::SIGTERM);
                let tx = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = tx.send(Event::MainDeadline);
                });
            }
        }
    }

    /// Stops services in reverse dependency order: a service is signalled once every service
    /// that started after it (start-after) and everything in its shutdown-after list is down.
    pub(super) fn drive_shutdown(&mut self) {
        if !matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let alive: Vec<bool> = self
            .services
            .iter()
            .map(|s| s.pid.is_some() || s.lingering.is_some())
            .collect();
        let mut to_stop = Vec::new();
        for (idx, s) in self.services.iter().enumerate() {
            if s.pid.is_none() || s.state == ServiceState::Stopping {
                continue;
            }
            let blocked = self.services.iter().enumerate().any(|(o, other)| {
                o != idx && decide::holds_back_stop(&s.spec, &other.spec, alive[o], self.phase)
            });
            if !blocked {
                to_stop.push(idx);
            }
        }
        for idx in to_stop {
            self.stop(idx, AfterStop::Stay);
        }
        let main_running = self.main.as_ref().is_some_and(|m| m.exit.is_none());
        if self
            .services
            .iter()
            .all(|s| s.pid.is_none() && s.lingering.is_none())
            && !main_running
        {
            self.phase = Phase::Finishing;
            if kill_leftovers(self.is_pid1, Signal::SIGTERM) {
                let tx = self.events.clone();
                tokio::spawn(async move {
                    // Leftovers get a short grace; reaping them continues meanwhile.
                    let deadline = Instant::now() + Duration::from_millis(100);
                    tokio::time::sleep_until(deadline.into()).await;
                    let _ = tx.send(Event::LeftoverDeadline);
                });
            } else {
                self.phase = Phase::Done;
            }
        }
    }
}
