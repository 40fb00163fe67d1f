//! BuildKit: our generated protocol types, the connection (Docker's embedded BuildKit through
//! `/grpc` on the Docker socket, or a standalone buildkitd over unix/tcp), the LLB builder and
//! the solve with live status. Design: `docs/builder.md`.

pub mod connect;
pub mod llb;
pub mod session;
pub mod solve;

/// Generated types, nested like BuildKit's proto packages so cross-package paths resolve.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    /// LLB (`pb`).
    pub mod pb {
        tonic::include_proto!("pb");
    }
    /// `moby.*`.
    pub mod moby {
        /// `moby.buildkit`.
        pub mod buildkit {
            /// `moby.buildkit.v1`: the Control API.
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.v1");
                /// `moby.buildkit.v1.frontend`: LLBBridge.
                pub mod frontend {
                    tonic::include_proto!("moby.buildkit.v1.frontend");
                }
            }
        }
        /// `moby.filesync`.
        pub mod filesync {
            /// `moby.filesync.v1`: FileSync and FileSend, served in a session.
            pub mod v1 {
                tonic::include_proto!("moby.filesync.v1");
            }
        }
    }
    /// `fsutil.types`: the file-transfer packets.
    pub mod fsutil {
        /// Packets and stats.
        pub mod types {
            tonic::include_proto!("fsutil.types");
        }
    }
}
