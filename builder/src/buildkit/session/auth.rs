//! `Auth.Credentials`: buildkitd asks the client for a registry's login when the registry
//! wants one (a push to `--registry`, a base image from a private registry); the answer is the
//! client's `docker login` (see [`crate::registry_auth`]), or none. BuildKit's clients also
//! offer token delegation (`GetTokenAuthority`, `FetchToken`); without those methods buildkitd
//! asks for the login itself, as it does of a client with `BUILDKIT_NO_CLIENT_TOKEN=1`.

use tonic::{Request, Response, Status};

use crate::buildkit::proto::moby::filesync::v1::{
    auth_server, CredentialsRequest, CredentialsResponse,
};

/// Answers with the client's logins.
pub struct Auth;

#[tonic::async_trait]
impl auth_server::Auth for Auth {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        // The helper may take a moment (a keychain): off the session's threads.
        let lookup = tokio::task::spawn_blocking(move || crate::registry_auth::login_for(&host));
        let login = lookup
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        let (username, secret) = login.map(|l| (l.username, l.secret)).unwrap_or_default();
        Ok(Response::new(CredentialsResponse { username, secret }))
    }
}
