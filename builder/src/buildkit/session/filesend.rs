//! `FileSend.DiffCopy`: the `docker`/`oci` exporters stream their archive to the client as
//! `BytesMessage` chunks and close their side when done. The chunks go to the caller in order;
//! the call ends (and buildkitd's export with it) once all of them were taken.

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ArchiveChunks;
use crate::buildkit::proto::moby::filesync::v1::{file_send_server, BytesMessage};

/// Receives one archive.
pub struct FileSend {
    sink: Mutex<Option<ArchiveChunks>>,
}

impl FileSend {
    /// Passes the archive's chunks to `sink`.
    pub fn new(sink: ArchiveChunks) -> Self {
        FileSend {
            sink: Mutex::new(Some(sink)),
        }
    }
}

#[tonic::async_trait]
impl file_send_server::FileSend for FileSend {
    type DiffCopyStream = ReceiverStream<Result<BytesMessage, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let Some(sink) = self.sink.lock().await.take() else {
            return Err(Status::already_exists("the archive was already received"));
        };
        // Nothing is ever sent back: the response ends when the archive has been taken.
        let (done, done_rx) = mpsc::channel(1);
        let mut chunks = request.into_inner();
        tokio::spawn(async move {
            loop {
                match chunks.message().await {
                    Ok(Some(m)) => {
                        if sink.send(Ok(Bytes::from(m.data))).await.is_err() {
                            let _ = done
                                .send(Err(Status::aborted("nobody takes the archive")))
                                .await;
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let broken = std::io::Error::other(format!("the archive broke off: {e}"));
                        let _ = sink.send(Err(broken)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(done_rx)))
    }
}
