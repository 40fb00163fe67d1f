//! A client of envd-init's API, used by `envd-init ctl` inside the container and by the host's
//! `envd` over a published TCP port.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::proto::health::health_client::HealthClient;
use crate::proto::supervisor::supervisor_client::SupervisorClient;

/// Adds the bearer token (if any) to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Typed clients over one connection.
pub struct Clients {
    /// `grpc.health.v1.Health`.
    pub health: HealthClient<InterceptedService<Channel, Bearer>>,
    /// `envd.supervisor.v1.Supervisor`.
    pub supervisor: SupervisorClient<InterceptedService<Channel, Bearer>>,
}

fn clients(channel: Channel, token: Option<&str>) -> anyhow::Result<Clients> {
    let bearer = Bearer(match token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    });
    Ok(Clients {
        health: HealthClient::with_interceptor(channel.clone(), bearer.clone()),
        supervisor: SupervisorClient::with_interceptor(channel, bearer),
    })
}

/// Connects over the unix socket.
pub async fn connect_unix(path: &Path) -> anyhow::Result<Clients> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector always dials the socket.
    let channel = Endpoint::try_from("http://[::1]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
    clients(channel, None)
}

/// Connects over TCP (`http://HOST:PORT`) with a bearer token.
pub async fn connect_tcp(url: &str, token: Option<&str>) -> anyhow::Result<Clients> {
    let channel = Endpoint::try_from(url.to_string())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
    clients(channel, token)
}
