//! The gRPC API: `grpc.health.v1.Health` and `envd.supervisor.v1.Supervisor`.
//!
//! Served on a unix socket (mode 0600: only the container's root and the socket's owner can
//! talk to it) and, with `--api-listen`, on TCP, where every call must carry
//! `authorization: Bearer TOKEN`; a missing or wrong token gets UNAUTHENTICATED.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::{Health, HealthServer};
use crate::proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use crate::proto::supervisor::supervisor_server::{Supervisor, SupervisorServer};
use crate::proto::supervisor::{
    self as pb, ListServicesRequest, ListServicesResponse, LogLine, LogsRequest, ServiceRequest,
    ServiceState, ServiceStatus,
};
use crate::service_logs::{self, Line};
use crate::supervisor::{ApiRefusal, ApiReply, ApiRequest, Event, Shared};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The API's implementation, over the supervisor's shared state.
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

impl Api {
    /// An API over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Api { shared }
    }
}

/// Whether one service counts as serving: running and healthy, or finished successfully.
pub fn serving(s: &ServiceStatus) -> bool {
    let state = ServiceState::try_from(s.state).unwrap_or(ServiceState::Unspecified);
    (state == ServiceState::Running && s.health == pb::Health::Healthy as i32)
        || state == ServiceState::Finished
}

/// The word for a service's state: the same in `envd-init ctl` and on the host (`envd ls`).
pub fn state_word(state: i32) -> &'static str {
    match ServiceState::try_from(state).unwrap_or(ServiceState::Unspecified) {
        ServiceState::Unspecified => "unknown",
        ServiceState::Pending => "pending",
        ServiceState::Starting => "starting",
        ServiceState::Running => "running",
        ServiceState::Backoff => "restarting",
        ServiceState::Stopping => "stopping",
        ServiceState::Finished => "finished",
        ServiceState::Failed => "failed",
        ServiceState::Stopped => "stopped",
    }
}

/// The word for a service's health.
pub fn health_word(health: i32) -> &'static str {
    match pb::Health::try_from(health).unwrap_or(pb::Health::Unspecified) {
        pb::Health::Healthy => "healthy",
        pb::Health::Unhealthy => "unhealthy",
        pb::Health::Unknown | pb::Health::Unspecified => "unknown",
    }
}

/// One word for state and health together: a running service is `healthy`, `unhealthy` or
/// still `starting`; otherwise its [`state_word`].
pub fn status_word(s: &ServiceStatus) -> &'static str {
    match ServiceState::try_from(s.state).unwrap_or(ServiceState::Unspecified) {
        ServiceState::Running => match pb::Health::try_from(s.health) {
            Ok(pb::Health::Healthy) => "healthy",
            Ok(pb::Health::Unhealthy) => "unhealthy",
            _ => "starting",
        },
        _ => state_word(s.state),
    }
}

/// The health of `name` ("" = the whole environment), or None when there is no such service.
pub fn health_of(statuses: &[ServiceStatus], name: &str) -> Option<ServingStatus> {
    let to_status = |ok: bool| {
        if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    if name.is_empty() {
        return Some(to_status(statuses.iter().all(serving)));
    }
    statuses
        .iter()
        .find(|s| s.name == name)
        .map(|s| to_status(serving(s)))
}

#[tonic::async_trait]
impl Health for Api {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = request.into_inner().service;
        let statuses = self.shared.status.borrow().clone();
        match health_of(&statuses, &name) {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Status::not_found(format!("no service named {name:?}"))),
        }
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let statuses = self.shared.status.borrow().clone();
        let mut map = HashMap::new();
        for s in &statuses {
            let status = health_of(&statuses, &s.name).unwrap_or(ServingStatus::Unknown);
            map.insert(
                s.name.clone(),
                HealthCheckResponse {
                    status: status as i32,
                },
            );
        }
        let overall = health_of(&statuses, "").unwrap_or(ServingStatus::Unknown);
        map.insert(
            String::new(),
            HealthCheckResponse {
                status: overall as i32,
            },
        );
        if map.len() > 100 {
            return Err(Status::resource_exhausted("more than 100 services"));
        }
        Ok(Response::new(HealthListResponse { statuses: map }))
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.into_inner().service;
        let mut rx = self.shared.status.subscribe();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let status = {
                    let statuses = rx.borrow_and_update();
                    health_of(&statuses, &name).unwrap_or(ServingStatus::ServiceUnknown)
                };
                if last != Some(status) {
                    last = Some(status);
                    let msg = Ok(HealthCheckResponse {
                        status: status as i32,
                    });
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

fn to_log_line(l: Line) -> LogLine {
    LogLine {
        stream: match l.stream {
            service_logs::Stream::Stdout => pb::log_line::Stream::Stdout as i32,
            service_logs::Stream::Stderr => pb::log_line::Stream::Stderr as i32,
        },
        line: l.text,
        at: l.at,
    }
}

#[tonic::async_trait]
impl Supervisor for Api {
    async fn list_services(
        &self,
        _request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        Ok(Response::new(ListServicesResponse {
            services: self.shared.status.borrow().clone(),
        }))
    }

    type LogsStream = BoxStream<LogLine>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let buffer = self
            .shared
            .log_buffer(&req.service)
            .ok_or_else(|| Status::not_found(format!("no service named {:?}", req.service)))?;
        let (lines, mut live) = buffer.tail(req.tail as usize);
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            for l in lines {
                if tx.send(Ok(to_log_line(l))).await.is_err() {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            loop {
                tokio::select! {
                    next = live.recv() => match next {
                        Ok(l) => if tx.send(Ok(to_log_line(l))).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let note = LogLine {
                                stream: pb::log_line::Stream::Stderr as i32,
                                line: format!("[envd-init] {n} lines skipped (reader too slow)").into_bytes(),
                                at: 0,
                            };
                            if tx.send(Ok(note)).await.is_err() { return }
                        }
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn restart(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceStatus>, Status> {
        self.send(request.into_inner().service, ApiRequest::Restart)
            .await
    }

    async fn stop(
        &self,
        request: Request<ServiceRequest>,
    ) -> Result<Response<ServiceStatus>, Status> {
        self.send(request.into_inner().service, ApiRequest::Stop)
            .await
    }
}

impl Api {
    async fn send(
        &self,
        service: String,
        make: fn(String, ApiReply) -> ApiRequest,
    ) -> Result<Response<ServiceStatus>, Status> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .events
            .send(Event::Api(make(service, tx)))
            .map_err(|_| Status::unavailable("the supervisor is stopping"))?;
        match rx.await {
            Ok(Ok(status)) => Ok(Response::new(status)),
            Ok(Err(refusal @ ApiRefusal::NoSuchService(_))) => {
                Err(Status::not_found(refusal.to_string()))
            }
            Ok(Err(refusal @ ApiRefusal::Stopping)) => {
                Err(Status::failed_precondition(refusal.to_string()))
            }
            Err(_) => Err(Status::unavailable("the supervisor is stopping")),
        }
    }
}

/// Serves the API on a unix socket (created with mode 0600, replacing a stale one).
pub async fn serve_unix(path: &Path, api: Api) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tonic::transport::Server::builder()
        .add_service(HealthServer::new(api.clone()))
        .add_service(SupervisorServer::new(api))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

/// Serves the API on TCP; every call must carry `authorization: Bearer <token>`.
pub async fn serve_tcp(addr: SocketAddr, token: String, api: Api) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let expected = Arc::new(format!("Bearer {token}"));
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    };
    tonic::transport::Server::builder()
        .add_service(HealthServer::with_interceptor(api.clone(), check.clone()))
        .add_service(SupervisorServer::with_interceptor(api, check))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ServiceState, health: pb::Health) -> ServiceStatus {
        ServiceStatus {
            state: state as i32,
            health: health as i32,
            ..Default::default()
        }
    }

    #[test]
    fn one_set_of_words_for_ctl_and_the_host() {
        let running = |h| status_word(&status(ServiceState::Running, h));
        assert_eq!(running(pb::Health::Healthy), "healthy");
        assert_eq!(running(pb::Health::Unhealthy), "unhealthy");
        assert_eq!(running(pb::Health::Unknown), "starting");
        let backoff = status(ServiceState::Backoff, pb::Health::Unknown);
        assert_eq!(status_word(&backoff), "restarting");
        assert_eq!(state_word(backoff.state), "restarting");
        let done = status(ServiceState::Finished, pb::Health::Healthy);
        assert_eq!(status_word(&done), state_word(done.state));
    }
}
