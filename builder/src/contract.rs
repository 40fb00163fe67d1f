//! The container contract: what an environment's image (made by [`crate::compile`]) and whatever
//! runs it (`envd up` through [`crate::env`], and the runtime inside: envd-init, envd-sshd) agree
//! on. A runner needs nothing else to start an environment, reach it and find it again: the user
//! and home, the ports, the paths it mounts, the variables it sets and the labels it reads back.

/// The account the environment's shells, services and `envd exec` run as.
pub const USER: &str = "envd";
/// The `envd` user's uid and gid in every dev image. The host user's own ids are given to it at
/// start by envd-init (`envd_supervisor::identity`), so the image and its cache do not depend on
/// who builds it.
pub const USER_IDS: (u32, u32) = (
    envd_supervisor::identity::IMAGE_UID,
    envd_supervisor::identity::IMAGE_UID,
);
/// The user's home; the project is mounted at `HOME/<directory name>`.
pub const HOME: &str = "/home/envd";
/// Home directories' caches (pip, Hugging Face, ...): a named volume per environment, so they
/// survive `envd down` (the runner mounts it; the image has the directory, owned by the user).
pub const CACHE_DIR: &str = "/home/envd/.cache";

/// Where envd-init reads service files.
pub const SERVICES_DIR: &str = "/etc/envd/services";
/// Directories the runtime writes (state, sockets, logs), owned by the user.
pub const RUNTIME_DIRS: [&str; 3] = ["/var/envd", "/run/envd", "/var/log/envd"];
/// envd-sshd's `authorized_keys`: not in the image (one image serves every host user), but the
/// host user's public key, mounted there read-only by the runner.
pub const AUTHORIZED_KEYS: &str = "/var/envd/authorized_keys";
/// envd-sshd's host key, made at its first start; the runner reads the `.pub` beside it to pin it.
pub const HOST_KEY: &str = "/var/envd/ssh_host_ed25519_key";
/// Where the host's CA bundle is mounted, read-only, in build steps and in the running
/// environment (never part of the image).
pub const HOST_CA: &str = "/etc/envd/host-ca.crt";
/// The variables that point TLS clients at [`HOST_CA`]: OpenSSL (Python's ssl, git, curl's
/// OpenSSL build, uv), requests, curl, pip and Node.js (npm).
pub const HOST_CA_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
];

/// Container port of envd-sshd.
pub const SSH_PORT: u16 = 2222;
/// Container port of envd-init's token-protected gRPC API.
pub const API_PORT: u16 = 2224;
/// Container port of Jupyter.
pub const JUPYTER_PORT: u16 = 8888;
/// Container port of the VS Code server.
pub const VSCODE_PORT: u16 = 8080;

/// Variable holding the API token (read by envd-init).
pub const ENV_API_TOKEN: &str = "ENVD_API_TOKEN";
/// Variable holding Jupyter's token (read by the jupyter service).
pub const ENV_JUPYTER_TOKEN: &str = "ENVD_JUPYTER_TOKEN";
/// Variable holding the VS Code server's password (read by the vscode service).
pub const ENV_VSCODE_PASSWORD: &str = "ENVD_VSCODE_PASSWORD";

/// Image label holding the program's hash (no rebuild when it is unchanged).
pub const LABEL_DIGEST: &str = "ai.tensorchord.envd.build.digest";
/// Image label holding the runtime graph (JSON) that the runner reads back.
pub const LABEL_RUNTIME: &str = "ai.tensorchord.envd.graph.runtime";
/// Image label saying whether the image is a dev image.
pub const LABEL_DEV: &str = "ai.tensorchord.envd.dev";
/// Container label carrying the environment's name.
pub const LABEL_NAME: &str = "ai.tensorchord.envd.name";
/// Container label carrying the uid of the host user who brought the environment up.
pub const LABEL_OWNER: &str = "ai.tensorchord.envd.owner";
/// Container label carrying the build context's host path.
pub const LABEL_CONTEXT: &str = "ai.tensorchord.envd.context";
/// Volume label carrying where in the environment the volume is mounted.
pub const LABEL_VOLUME_PATH: &str = "ai.tensorchord.envd.volume.path";
