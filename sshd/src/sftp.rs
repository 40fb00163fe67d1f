//! The `sftp` subsystem (SFTP v3, what OpenSSH's `sftp` and, since OpenSSH 9, `scp` speak) over
//! the real filesystem, as the session's user. Relative paths start at the user's home.
//!
//! Every file system call runs on tokio's blocking pool: one that never returns (an OPEN of a
//! FIFO with no writer, a hung network mount) stalls that sftp session only, never the server.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use russh_sftp::protocol::{
    Attrs, Data, File as DirEntry, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves one sftp session until the client closes it.
pub async fn serve<S>(stream: S, home: PathBuf)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    russh_sftp::server::run(stream, Sftp::new(home)).await;
}

enum Open {
    File(Arc<File>),
    /// A directory's entries, handed out [`READDIR_BATCH`] per READDIR.
    Dir(std::vec::IntoIter<DirEntry>),
}

/// Entries per READDIR reply, as OpenSSH's sftp-server sends (its client refuses a reply
/// larger than 256 KiB, which a whole large directory would be).
pub const READDIR_BATCH: usize = 100;

/// Runs a file system call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StatusCode> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(StatusCode::Failure),
    }
}

/// The sftp handler: open files and directories by handle.
pub struct Sftp {
    home: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
}

impl Sftp {
    /// A handler rooted at `home` for relative paths.
    pub fn new(home: PathBuf) -> Self {
        Sftp {
            home,
            handles: HashMap::new(),
            next: 0,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.home.join(path)
        };
        normalize(&joined)
    }

    fn file(&self, handle: &str) -> Result<Arc<File>, StatusCode> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f.clone()),
            _ => Err(StatusCode::Failure),
        }
    }

    fn add(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn err(e: std::io::Error) -> StatusCode {
    match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn attrs_of(meta: &fs::Metadata) -> FileAttributes {
    FileAttributes::from(meta)
}

fn longname(name: &str, meta: &fs::Metadata) -> String {
    let mode = meta.mode();
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{perms} {:>3} {:<8} {:<8} {:>10} {name}",
        meta.nlink(),
        meta.uid(),
        meta.gid(),
        meta.size()
    )
}

fn apply_attrs(path: &Path, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(perm) = attrs.permissions {
        fs::set_permissions(path, fs::Permissions::from_mode(perm & 0o7777))?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let to = |t: u32| nix::sys::time::TimeSpec::new(t as i64, 0);
        nix::sys::stat::utimensat(
            None,
            path,
            &to(atime),
            &to(mtime),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        nix::unistd::chown(
            path,
            attrs.uid.map(nix::unistd::Uid::from_raw),
            attrs.gid.map(nix::unistd::Gid::from_raw),
        )?;
    }
    Ok(())
}

fn apply_file_attrs(f: &File, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        f.set_len(size)?;
    }
    if let Some(perm) = attrs.permissions {
        f.set_permissions(fs::Permissions::from_mode(perm & 0o7777))?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let to = |t: u32| nix::sys::time::TimeSpec::new(t as i64, 0);
        nix::sys::stat::futimens(f.as_raw_fd(), &to(atime), &to(mtime))?;
    }
    Ok(())
}

/// A directory's entries with their attributes, `.` and `..` first.
fn list_dir(dir: &Path) -> std::io::Result<Vec<DirEntry>> {
    let mut entries = Vec::new();
    for name in [".", ".."] {
        if let Ok(meta) = fs::metadata(dir.join(name)) {
            entries.push(DirEntry {
                filename: name.into(),
                longname: longname(name, &meta),
                attrs: attrs_of(&meta),
            });
        }
    }
    for e in fs::read_dir(dir)? {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(meta) = fs::symlink_metadata(e.path()) {
            entries.push(DirEntry {
                longname: longname(&name, &meta),
                filename: name,
                attrs: attrs_of(&meta),
            });
        }
    }
    Ok(entries)
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let mut o = OpenOptions::new();
        o.read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .mode(attrs.permissions.map(|p| p & 0o7777).unwrap_or(0o644));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        // O_NONBLOCK so a FIFO without a peer fails or opens at once instead of hanging a
        // blocking thread; cleared after, for plain blocking reads and writes.
        o.custom_flags(nix::libc::O_NONBLOCK);
        let file = blocking(move || {
            let f = o.open(&path)?;
            let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
            Ok(f)
        })
        .await?;
        Ok(Handle {
            id,
            handle: self.add(Open::File(Arc::new(file))),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.handles.remove(&handle).ok_or(StatusCode::Failure)?;
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = self.file(&handle)?;
        let buf = blocking(move || {
            let mut buf = vec![0u8; len.min(256 * 1024) as usize];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await?;
        if buf.is_empty() && len > 0 {
            return Err(StatusCode::Eof);
        }
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        blocking(move || f.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || fs::symlink_metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || fs::metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let f = self.file(&handle)?;
        let meta = blocking(move || f.metadata()).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || apply_attrs(&path, &attrs)).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        blocking(move || apply_file_attrs(&f, &attrs)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let dir = self.path(&path);
        let entries = blocking(move || list_dir(&dir)).await?;
        Ok(Handle {
            id,
            handle: self.add(Open::Dir(entries.into_iter())),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(Open::Dir(entries)) => {
                let files: Vec<DirEntry> = entries.by_ref().take(READDIR_BATCH).collect();
                if files.is_empty() {
                    Err(StatusCode::Eof)
                } else {
                    Ok(Name { id, files })
                }
            }
            _ => Err(StatusCode::Failure),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.path(&filename);
        blocking(move || fs::remove_file(path)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path);
        blocking(move || {
            fs::create_dir(&p)?;
            if let Some(perm) = attrs.permissions {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(perm & 0o7777));
            }
            Ok(())
        })
        .await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || fs::remove_dir(path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(if path.is_empty() { "." } else { &path });
        let real = blocking(move || Ok(fs::canonicalize(&p).unwrap_or(p))).await?;
        let name = real.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![DirEntry {
                filename: name.clone(),
                longname: name,
                attrs: FileAttributes::default(),
            }],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        blocking(move || {
            // SFTP v3 rename must not overwrite (OpenSSH's posix-rename extension does).
            if fs::symlink_metadata(&to).is_ok() {
                return Err(std::io::Error::from(ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        })
        .await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        let target = blocking(move || fs::read_link(path)).await?;
        let name = target.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![DirEntry {
                filename: name.clone(),
                longname: name,
                attrs: FileAttributes::default(),
            }],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH's client sends the arguments swapped relative to the draft; follow OpenSSH.
        let at = self.path(&targetpath);
        blocking(move || std::os::unix::fs::symlink(&linkpath, at)).await?;
        Ok(ok(id))
    }
}
