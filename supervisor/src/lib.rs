//! # envd-supervisor
//!
//! `envd-init`, the PID 1 of every envd environment. It owns:
//!
//! - [`config`]: service files (Horust's TOML format plus envd's additions), validated up front
//!   with `FILE:LINE: what is wrong` errors;
//! - [`identity`]: the environment's user takes the host user's ids at start, then envd-init
//!   drops to it;
//! - [`spawn`] and [`reaper`]: starting processes in their own process groups, as their user, and
//!   being the single owner of `waitpid` so no exit status is ever stolen;
//! - [`supervisor`]: the event-driven state machine (dependencies, restarts with backoff and
//!   attempts, failure strategies, ordered stop, reload on SIGHUP, signal forwarding);
//! - [`health`]: http, tcp, file and command health checks;
//! - [`console`]: envd-init's stdout and stderr, written by one thread so a stalled reader never
//!   blocks PID 1 (overflow is dropped and counted);
//! - [`guard`]: a panic in one subsystem is logged and contained; the reaper, signal handling
//!   and the API are started again;
//! - [`service_logs`]: per-service log files with bounded rotation and an in-memory tail;
//! - [`api`] and [`client`]: the gRPC API (`grpc.health.v1.Health` and
//!   `envd.supervisor.v1.Supervisor`) on a unix socket and, with a bearer token, on TCP. The host
//!   side (`envd`) uses [`client`] too.

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod console;
pub mod diagnostics;
pub mod guard;
pub mod health;
pub mod identity;
pub mod located;
pub mod reaper;
pub mod service_logs;
pub mod spawn;
pub mod suggest;
pub mod supervisor;

/// Generated gRPC types and stubs.
pub mod proto {
    /// `grpc.health.v1`, the standard health-checking protocol.
    pub mod health {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("grpc.health.v1");
    }
    /// `envd.supervisor.v1`, envd-init's control API.
    pub mod supervisor {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("envd.supervisor.v1");
    }
}

/// Where the API's unix socket lives unless `--api-socket` says otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/envd/supervisor.sock";
