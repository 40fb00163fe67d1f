//! Signals, `SIGHUP` reloads and API requests.

use super::*;

impl Supervisor {
    pub(super) fn on_signal(&mut self, sig: Signal) {
        let main_pid = self
            .main
            .as_ref()
            .filter(|m| m.exit.is_none())
            .map(|m| m.pid);
        match sig {
            Signal::SIGTERM | Signal::SIGINT => {
                if let Some(pid) = main_pid {
                    // tini's contract: the main command decides; its exit ends the environment.
                    let _ = killpg(pid, sig);
                } else if self.phase.stopping() {
                    crate::warn!("second {sig}: killing everything now");
                    if let Phase::Stopping { forced } = &mut self.phase {
                        *forced = true;
                    }
                    for s in &self.services {
                        if let Some(pid) = s.pid.or(s.lingering) {
                            let _ = killpg(pid, Signal::SIGKILL);
                        }
                    }
                } else {
                    self.begin_shutdown();
                }
            }
            Signal::SIGHUP => self.reload(),
            Signal::SIGCHLD => {}
            other => {
                if let Some(pid) = main_pid {
                    let _ = killpg(pid, other);
                } else {
                    crate::debug!("ignoring {other}: no main command to forward it to");
                }
            }
        }
    }

    pub(super) fn reload(&mut self) {
        if self.phase.stopping() {
            return;
        }
        let specs = match config::load(&self.dirs) {
            Ok(s) => s,
            Err(errors) => {
                eprintln!("envd-init: reload refused, keeping the running services:\n{errors}");
                return;
            }
        };
        crate::info!("reloading {} service files", specs.len());
        let new_names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let old: Vec<(usize, String)> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed)
            .map(|(i, s)| (i, s.spec.name.clone()))
            .collect();
        let mut removals = Vec::new();
        for (idx, name) in &old {
            if !new_names.contains(name) {
                removals.push(*idx);
            }
        }
        for spec in specs {
            match self.index(&spec.name) {
                Some(idx) => {
                    if *self.services[idx].spec != spec {
                        self.services[idx].note("definition changed; restarting".into());
                        self.stop(idx, AfterStop::Replace(Box::new(spec)));
                    }
                }
                None => {
                    let logs = self.shared.log_buffer_or_new(&spec.name);
                    self.services.push(Service::new(spec, logs));
                }
            }
        }
        // Remove from the back so indices stay valid.
        removals.sort_unstable();
        for idx in removals.into_iter().rev() {
            let name = self.services[idx].spec.name.clone();
            self.services[idx].note("removed from the services directory; stopping".into());
            self.stop(idx, AfterStop::Remove);
            if let Ok(mut logs) = self.shared.logs.lock() {
                if self
                    .services
                    .iter()
                    .all(|s| s.spec.name != name || s.removed)
                {
                    logs.remove(&name);
                }
            }
        }
    }

    pub(super) fn on_api(&mut self, req: ApiRequest) {
        let (name, reply, after) = match req {
            ApiRequest::Restart(n, r) => (n, r, AfterStop::Restart),
            ApiRequest::Stop(n, r) => (n, r, AfterStop::Stay),
        };
        if self.phase.stopping() {
            let _ = reply.send(Err(ApiRefusal::Stopping));
            return;
        }
        let Some(idx) = self.index(&name) else {
            let _ = reply.send(Err(ApiRefusal::NoSuchService(name)));
            return;
        };
        self.stop(idx, after);
        self.tick();
        let status = self
            .index(&name)
            .map(|i| self.services[i].status())
            .ok_or(ApiRefusal::NoSuchService(name));
        let _ = reply.send(status);
    }
}
