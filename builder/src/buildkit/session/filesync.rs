//! `FileSync.DiffCopy`: sending a directory to buildkitd in fsutil's protocol.
//!
//! The sender sends one STAT packet per entry in walk order (each directory before what it holds,
//! names in byte order), then an empty STAT. buildkitd compares with what it already has and asks
//! for the contents it lacks by index in that sequence (REQ); each file goes as DATA packets ended
//! by an empty one. buildkitd ends with FIN, answered with FIN. Modes travel as Go's `os.FileMode`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::buildkit::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use crate::buildkit::proto::moby::filesync::v1::file_sync_server;

/// File contents: held in memory, or read from the host when buildkitd asks for them.
#[derive(Debug, Clone)]
pub enum Content {
    /// The bytes.
    Bytes(Arc<Vec<u8>>),
    /// A host file of this size.
    Host(PathBuf, u64),
}

/// One entry of a directory offered to buildkitd.
#[derive(Debug, Clone)]
pub enum LocalEntry {
    /// A directory with these permission bits.
    Dir(u32),
    /// A symbolic link to this target.
    Link(String),
    /// A regular file with these permission bits.
    File(u32, Content),
}

/// A directory offered to buildkitd: entries by `/`-separated relative path.
#[derive(Debug, Clone, Default)]
pub struct LocalDir {
    entries: BTreeMap<String, LocalEntry>,
}

impl LocalDir {
    /// Adds an entry; missing parent directories are added as `0755` directories.
    pub fn insert(&mut self, path: &str, entry: LocalEntry) {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert(LocalEntry::Dir(0o755));
        }
        self.entries.insert(parts.join("/"), entry);
    }

    /// The entries in fsutil's walk order: by path component, so a directory's contents follow
    /// it directly (`a`, `a/b`, `a-c`; a plain string sort would put `a-c` before `a/b`).
    fn walk_order(&self) -> Vec<(&String, &LocalEntry)> {
        let mut all: Vec<_> = self.entries.iter().collect();
        all.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        all
    }
}

/// Go's `os.FileMode` bits that fsutil puts on the wire.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const STICKY: u32 = 1 << 20;
}

/// A unix permission mode (with set-id and sticky bits) as Go's `os.FileMode`.
fn go_file_mode(unix: u32) -> u32 {
    let mut mode = unix & 0o777;
    for (bit, go) in [
        (0o4000, go_mode::SETUID),
        (0o2000, go_mode::SETGID),
        (0o1000, go_mode::STICKY),
    ] {
        if unix & bit != 0 {
            mode |= go;
        }
    }
    mode
}

/// The STAT of one entry. Owner root and time zero: the same files give the same transfer on
/// any host (BuildKit's cache checks content, not times).
fn stat(path: &str, entry: &LocalEntry) -> Stat {
    let (mode, size, linkname) = match entry {
        LocalEntry::Dir(perm) => (go_mode::DIR | go_file_mode(*perm), 0, String::new()),
        LocalEntry::Link(target) => (go_mode::SYMLINK | 0o777, 0, target.clone()),
        LocalEntry::File(perm, content) => {
            let size = match content {
                Content::Bytes(b) => b.len() as u64,
                Content::Host(_, size) => *size,
            };
            (go_file_mode(*perm), size as i64, String::new())
        }
    };
    Stat {
        path: path.to_string(),
        mode,
        size,
        linkname,
        ..Default::default()
    }
}

/// Serves the session's directories by name (the `dir-name` header of each call).
pub struct FileSync {
    dirs: Arc<BTreeMap<String, LocalDir>>,
}

impl FileSync {
    /// Offers `dirs`.
    pub fn new(dirs: Arc<BTreeMap<String, LocalDir>>) -> Self {
        FileSync { dirs }
    }
}

type Packets = mpsc::Sender<Result<Packet, Status>>;

#[tonic::async_trait]
impl file_sync_server::FileSync for FileSync {
    type DiffCopyStream = ReceiverStream<Result<Packet, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let name = request
            .metadata()
            .get("dir-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let Some(dir) = self.dirs.get(&name).cloned() else {
            return Err(Status::not_found(format!(
                "no access allowed to dir {name:?}"
            )));
        };
        let (tx, rx) = mpsc::channel(64);
        let incoming = request.into_inner();
        tokio::spawn(async move {
            if let Err(e) = send_dir(&dir, incoming, &tx).await {
                let data = format!("envd: sending {name:?}: {e:#}").into_bytes();
                let _ = tx.send(Ok(packet(PacketType::PacketErr, 0, data))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn packet(kind: PacketType, id: u32, data: Vec<u8>) -> Packet {
    Packet {
        r#type: kind as i32,
        stat: None,
        id,
        data,
    }
}

/// The sender's side of one transfer.
async fn send_dir(
    dir: &LocalDir,
    mut incoming: Streaming<Packet>,
    tx: &Packets,
) -> anyhow::Result<()> {
    let order = dir.walk_order();
    for (path, entry) in &order {
        let mut p = packet(PacketType::PacketStat, 0, Vec::new());
        p.stat = Some(stat(path, entry));
        tx.send(Ok(p)).await.context("buildkitd went away")?;
    }
    let end_of_stats = packet(PacketType::PacketStat, 0, Vec::new());
    tx.send(Ok(end_of_stats))
        .await
        .context("buildkitd went away")?;
    while let Some(p) = incoming.message().await? {
        match p.r#type() {
            PacketType::PacketReq => {
                let Some((_, LocalEntry::File(_, content))) = order.get(p.id as usize) else {
                    bail!("buildkitd asked for entry {}, which is not a file", p.id);
                };
                send_file(p.id, content, tx).await?;
            }
            PacketType::PacketFin => {
                let _ = tx
                    .send(Ok(packet(PacketType::PacketFin, 0, Vec::new())))
                    .await;
                return Ok(());
            }
            PacketType::PacketErr => bail!("buildkitd: {}", String::from_utf8_lossy(&p.data)),
            PacketType::PacketStat | PacketType::PacketData => {}
        }
    }
    Ok(())
}

/// Bytes per DATA packet, as fsutil's sender.
const DATA_CHUNK: usize = 32 * 1024;

async fn send_file(id: u32, content: &Content, tx: &Packets) -> anyhow::Result<()> {
    let data = |bytes: Vec<u8>| Ok(packet(PacketType::PacketData, id, bytes));
    match content {
        Content::Bytes(bytes) => {
            for chunk in bytes.chunks(DATA_CHUNK) {
                tx.send(data(chunk.to_vec())).await?;
            }
        }
        Content::Host(path, _) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut buf = vec![0u8; DATA_CHUNK];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                tx.send(data(buf[..n].to_vec())).await?;
            }
        }
    }
    tx.send(data(Vec::new())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> LocalEntry {
        LocalEntry::File(0o644, Content::Bytes(Arc::new(text.as_bytes().to_vec())))
    }

    #[test]
    fn walk_order_puts_a_directory_s_contents_right_after_it_and_adds_parents() {
        let mut dir = LocalDir::default();
        dir.insert("a-c", file("1"));
        dir.insert("a/b", file("2"));
        dir.insert("z/y/x", file("3"));
        dir.insert("a.txt", file("4"));
        let order: Vec<&str> = dir.walk_order().iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["a", "a/b", "a-c", "a.txt", "z", "z/y", "z/y/x"]);
    }

    #[test]
    fn modes_are_go_file_modes() {
        assert_eq!(stat("d", &LocalEntry::Dir(0o755)).mode, (1 << 31) | 0o755);
        assert_eq!(
            stat("l", &LocalEntry::Link("t".into())).mode,
            (1 << 27) | 0o777
        );
        let setuid = LocalEntry::File(0o4755, Content::Bytes(Arc::new(vec![1, 2])));
        let s = stat("f", &setuid);
        assert_eq!((s.mode, s.size), ((1 << 23) | 0o755, 2));
        assert_eq!(go_file_mode(0o3777), (1 << 22) | (1 << 20) | 0o777);
    }
}
