//! envd-init's gRPC API from the outside: the bearer token on TCP, grpc.health.v1 Check, List
//! and Watch, and the Supervisor service.

use std::time::Duration;

use envd_e2e::init::{p, scratch, write_service, Init};
use envd_supervisor::client;
use envd_supervisor::proto::health::health_check_response::ServingStatus;
use envd_supervisor::proto::health::{HealthCheckRequest, HealthListRequest};
use envd_supervisor::proto::supervisor::ListServicesRequest;

const TOKEN: &str = "test-token-0123456789abcdef";

fn start_with_api() -> (Init, String) {
    let dir = scratch();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let ready = p(dir.path(), "ready");
    write_service(dir.path(), "quick", "command = \"sleep 100\"\n");
    write_service(
        dir.path(),
        "slow",
        &format!("command = \"sleep 100\"\n[healthiness]\nfile-path = \"{ready}\"\nmax-failed = 100000\n"),
    );
    let port = envd_e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let token_file = p(dir.path(), "token");
    let init = Init::start(
        dir,
        &["--api-listen", &listen, "--api-token-file", &token_file],
        &[],
    );
    init.status();
    (init, format!("http://{listen}"))
}

#[tokio::test]
async fn tcp_api_requires_the_bearer_token() {
    let (init, url) = start_with_api();
    for token in [None, Some("wrong-token-0123456789")] {
        let mut c = client::connect_tcp(&url, token).await.unwrap();
        let err = c
            .supervisor
            .list_services(ListServicesRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        let err = c
            .health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    let mut c = client::connect_tcp(&url, Some(TOKEN)).await.unwrap();
    let list = c
        .supervisor
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.services.len(), 2);
    drop(init);
}

/// Awaits `f` for at most 10 s: a stream that never answers fails the test, saying which.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no message within 10 s"))
}

#[tokio::test]
async fn health_check_list_and_watch() {
    let (init, url) = start_with_api();
    let mut c = client::connect_tcp(&url, Some(TOKEN)).await.unwrap();
    let check = |name: &str| HealthCheckRequest {
        service: name.into(),
    };

    let err = c.health.check(check("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut unknown = c.health.watch(check("nope")).await.unwrap().into_inner();
    let first = within("watch of an unknown service", unknown.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);

    // Wait until "quick" serves; "slow" is waiting for its file, so "" does not serve yet.
    let mut quick = c.health.watch(check("quick")).await.unwrap().into_inner();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), quick.message())
            .await
            .expect("watch quick")
            .unwrap()
            .unwrap();
        if m.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    let overall = c.health.check(check("")).await.unwrap().into_inner();
    assert_eq!(overall.status, ServingStatus::NotServing as i32);
    let list = c
        .health
        .list(HealthListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.statuses.len(), 3, "{list:?}");
    assert_eq!(
        list.statuses["slow"].status,
        ServingStatus::NotServing as i32
    );

    let mut watch = c.health.watch(check("")).await.unwrap().into_inner();
    let m = within("watch of the whole", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, ServingStatus::NotServing as i32);
    std::fs::write(init.path().join("ready"), "").unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("Watch must send the change")
        .unwrap()
        .unwrap();
    assert_eq!(m.status, ServingStatus::Serving as i32);
}

#[test]
fn api_listen_without_a_token_refuses_to_start() {
    let dir = scratch();
    let port = envd_e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut init = Init::start(
        dir,
        &["--api-listen", &listen, "--api-token-file", "/nonexistent"],
        &[],
    );
    assert_eq!(init.wait_exit(Duration::from_secs(10)), 2);
    assert!(init.log().contains("needs a token"), "{}", init.log());
}

#[test]
fn unix_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let init = Init::start(scratch(), &[], &[]);
    init.status();
    let mode = std::fs::metadata(init.path().join("api.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
