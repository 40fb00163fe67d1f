//! The environment's user takes the host user's ids before anything else starts.
//!
//! A bind-mounted project is only writable inside, and files made inside only belong to the
//! host user outside, when the process's uid and gid are the host user's: there is no id mapping
//! between a container and its host on Docker 20.10. The image is built once with its user at a
//! fixed uid ([`IMAGE_UID`]), so every host user shares one image and its build cache; at start,
//! envd-init (started as root) gives that user the host user's uid and gid, gives it back what
//! it owned in the image, then drops to it for good (as devcontainers' `updateRemoteUserUID`
//! does, but at start instead of in a second image).
//!
//! What changes, and why:
//! - `/etc/passwd`: the user's uid and gid. A uid that another account already has (uid 0 for a
//!   root host user) is shared, as `useradd -o` would: the name stays the environment's user, so
//!   `$USER`, `$HOME` and the SSH login stay the same for every host user.
//! - `/etc/group`: the user's group moves to the new gid when no other group has it (so files
//!   show `envd envd` inside); the image's gid keeps a group the user stays a member of, because
//!   the toolchains (`/opt/envd/venv`, conda) are group-writable by it: `pip install` still works
//!   without copying them (a recursive chown would copy every file up into the container layer).
//! - Ownership: what the user owned in its home and in `/var/envd`, `/run/envd`, `/var/log/envd`,
//!   plus each `own` path (named volumes), never crossing into another mount: the bind-mounted
//!   project and `-v` mounts are the host user's files and are never touched.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::User;

/// The uid and gid the environment's user has in every image envd builds.
pub const IMAGE_UID: u32 = 1000;

/// Directories the environment's user owns besides its home.
const RUNTIME_DIRS: &[&str] = &["/var/envd", "/run/envd", "/var/log/envd"];

/// What `envd-init --user NAME [--user-ids UID:GID] [--own PATH]...` asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The account the environment runs as.
    pub user: String,
    /// The host user's uid and gid, when the account should take them.
    pub ids: Option<(u32, u32)>,
    /// More paths (named volumes) whose contents the account owned in the image.
    pub own: Vec<PathBuf>,
}

/// Parses `UID:GID`.
pub fn parse_ids(text: &str) -> Result<(u32, u32), String> {
    let (u, g) = text
        .split_once(':')
        .ok_or_else(|| format!("--user-ids {text:?}: expected UID:GID, e.g. 1234:1234"))?;
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("--user-ids {text:?}: {s:?} is not a number"))
    };
    Ok((num(u)?, num(g)?))
}

/// An `/etc/passwd` line's fields.
fn fields(line: &str) -> Vec<&str> {
    line.split(':').collect()
}

/// The uid and gid `user` has in `passwd`.
pub fn ids_in_passwd(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f = fields(l);
        (f.len() >= 7 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// `passwd` with `user`'s uid and gid replaced.
pub fn set_passwd_ids(passwd: &str, user: &str, uid: u32, gid: u32) -> Result<String, String> {
    let mut found = false;
    let lines: Vec<String> = passwd
        .lines()
        .map(|l| {
            let mut f = fields(l);
            if f.len() >= 7 && f[0] == user {
                found = true;
                let (u, g) = (uid.to_string(), gid.to_string());
                f[2] = &u;
                f[3] = &g;
                f.join(":")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        return Err(format!("there is no user {user:?} in /etc/passwd"));
    }
    Ok(lines.join("\n") + "\n")
}

/// `group` after `user`'s primary group moved from `old_gid` to `new_gid`.
///
/// When no group has `new_gid`, the user's group takes it and the old gid stays as the group
/// `<name>-image`; otherwise the existing group is the primary one. Either way the user becomes a
/// member of the old gid's group, which owns the image's toolchains.
pub fn set_group_ids(group: &str, user: &str, old_gid: u32, new_gid: u32) -> String {
    if old_gid == new_gid {
        return group.to_string();
    }
    let gid_of = |l: &str| fields(l).get(2).and_then(|g| g.parse::<u32>().ok());
    let new_taken = group.lines().any(|l| gid_of(l) == Some(new_gid));
    let mut out = Vec::new();
    for line in group.lines() {
        let f = fields(line);
        if f.len() < 4 || gid_of(line) != Some(old_gid) {
            out.push(line.to_string());
            continue;
        }
        let members = with_member(f[3], user);
        if new_taken {
            out.push(format!("{}:{}:{}:{members}", f[0], f[1], f[2]));
        } else {
            out.push(format!("{}:{}:{new_gid}:", f[0], f[1]));
            out.push(format!("{}-image:{}:{old_gid}:{members}", f[0], f[1]));
        }
    }
    out.join("\n") + "\n"
}

fn with_member(members: &str, user: &str) -> String {
    let mut list: Vec<&str> = members.split(',').filter(|m| !m.is_empty()).collect();
    if !list.contains(&user) {
        list.push(user);
    }
    list.join(",")
}

/// Replaces a file's contents atomically (a reader sees the old or the new file, never half).
fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("envd-init.tmp");
    let mode = std::fs::metadata(path).map(|m| m.mode()).unwrap_or(0o644);
    std::fs::write(&tmp, text)
        .and_then(|_| {
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        })
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot rewrite {}: {e}", path.display()))
}

/// Gives `to` whatever `from` owned under `root` (uid and gid separately), on `root`'s file
/// system only. Returns how many entries changed.
pub fn reown_tree(root: &Path, from: (u32, u32), to: (u32, u32)) -> Result<u64, String> {
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return Ok(0);
    };
    let dev = top.dev();
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue; // another mount: the host's files or a volume of its own
        }
        let uid = (meta.uid() == from.0).then_some(to.0);
        let gid = (meta.gid() == from.1).then_some(to.1);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
            changed += 1;
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    Ok(changed)
}

/// Gives the account the host user's ids (when asked and different) and its volumes, then
/// drops to it. Returns the number of files whose owner changed.
pub fn adopt(req: &Request) -> Result<u64, String> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    let old = ids_in_passwd(&passwd, &req.user)
        .ok_or_else(|| format!("--user {:?}: no such user in /etc/passwd", req.user))?;
    let new = req.ids.unwrap_or(old);
    if !nix::unistd::getuid().is_root() {
        if new != old || !req.own.is_empty() {
            return Err(format!(
                "--user-ids and --own need envd-init to start as root (it runs as uid {})",
                nix::unistd::getuid()
            ));
        }
        return Ok(0);
    }
    let mut changed = 0;
    if new != old {
        let group = std::fs::read_to_string("/etc/group")
            .map_err(|e| format!("cannot read /etc/group: {e}"))?;
        replace_file(
            Path::new("/etc/group"),
            &set_group_ids(&group, &req.user, old.1, new.1),
        )?;
        replace_file(
            Path::new("/etc/passwd"),
            &set_passwd_ids(&passwd, &req.user, new.0, new.1)?,
        )?;
        let home = User::from_name(&req.user)
            .ok()
            .flatten()
            .map(|u| u.dir)
            .unwrap_or_default();
        let mut roots: Vec<PathBuf> = vec![home];
        roots.extend(RUNTIME_DIRS.iter().map(PathBuf::from));
        for r in roots.iter().filter(|r| !r.as_os_str().is_empty()) {
            changed += reown_tree(r, old, new)?;
        }
    }
    for volume in &req.own {
        changed += own_volume(volume, old, new)?;
    }
    become_user(&req.user)?;
    Ok(changed)
}

/// A volume's top directory becomes the user's whatever made it (Docker makes a fresh volume's
/// mount point root's when the image has no such directory); below it, what the image's user
/// owned.
fn own_volume(path: &Path, old: (u32, u32), new: (u32, u32)) -> Result<u64, String> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| format!("--own {}: {e}", path.display()))?;
    let mut changed = 0;
    if (meta.uid(), meta.gid()) != new {
        std::os::unix::fs::lchown(path, Some(new.0), Some(new.1))
            .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
        changed += 1;
    }
    if new != old {
        changed += reown_tree(path, old, new)?;
    }
    Ok(changed)
}

/// Drops to `user` for good (groups, gid, then uid) and sets `USER`, `LOGNAME` and `HOME`, so
/// that lookups by uid cannot confuse it with another account of the same uid (root).
fn become_user(user: &str) -> Result<(), String> {
    let entry = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user {user:?}"))?;
    let cname = CString::new(user).map_err(|e| e.to_string())?;
    let groups = nix::unistd::getgrouplist(&cname, entry.gid).unwrap_or_else(|_| vec![entry.gid]);
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(entry.gid).map_err(|e| format!("setgid: {e}"))?;
    nix::unistd::setuid(entry.uid).map_err(|e| format!("setuid: {e}"))?;
    std::env::set_var("USER", user);
    std::env::set_var("LOGNAME", user);
    std::env::set_var("HOME", &entry.dir);
    Ok(())
}

/// The passwd entry for the current uid, preferring the account `$USER` names when it has this
/// uid: with a root host user, root and the environment's user share uid 0.
pub fn current_user() -> Option<User> {
    let uid = nix::unistd::getuid();
    std::env::var("USER")
        .ok()
        .and_then(|name| User::from_name(&name).ok().flatten())
        .filter(|u| u.uid == uid)
        .or_else(|| User::from_uid(uid).ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nenvd:x:1000:1000::/home/envd:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nenvd:x:1000:\n";

    #[test]
    fn ids_parse_with_clear_errors() {
        assert_eq!(parse_ids("1234:100").unwrap(), (1234, 100));
        assert!(parse_ids("1234").unwrap_err().contains("expected UID:GID"));
        assert!(parse_ids("a:1")
            .unwrap_err()
            .contains("\"a\" is not a number"));
    }

    #[test]
    fn passwd_keeps_every_other_line() {
        let p = set_passwd_ids(PASSWD, "envd", 0, 0).unwrap();
        assert_eq!(
            p,
            "root:x:0:0:root:/root:/bin/bash\nenvd:x:0:0::/home/envd:/bin/bash\n"
        );
        assert_eq!(ids_in_passwd(&p, "envd"), Some((0, 0)));
        assert_eq!(ids_in_passwd(&p, "root"), Some((0, 0)));
        assert!(set_passwd_ids(PASSWD, "nobody", 1, 1).is_err());
    }

    #[test]
    fn a_free_gid_moves_the_group_and_keeps_the_image_gid_as_a_membership() {
        let g = set_group_ids(GROUP, "envd", 1000, 1234);
        assert_eq!(
            g,
            "root:x:0:\nusers:x:100:\nenvd:x:1234:\nenvd-image:x:1000:envd\n"
        );
    }

    #[test]
    fn a_taken_gid_is_used_as_it_is() {
        let g = set_group_ids(GROUP, "envd", 1000, 0);
        assert_eq!(g, "root:x:0:\nusers:x:100:\nenvd:x:1000:envd\n");
        // Idempotent: a second start changes nothing more.
        assert_eq!(set_group_ids(&g, "envd", 1000, 0), g);
        assert_eq!(set_group_ids(GROUP, "envd", 1000, 1000), GROUP);
    }

    #[test]
    fn reown_changes_only_what_the_old_ids_owned() {
        // chown to other ids needs root, which the suite runs as (scripts/test).
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("sub/b");
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        std::os::unix::fs::lchown(dir.path(), Some(4321), Some(4321)).unwrap();
        std::os::unix::fs::lchown(&a, Some(4321), Some(7)).unwrap();
        std::os::unix::fs::lchown(b.parent().unwrap(), Some(4321), Some(4321)).unwrap();
        std::os::unix::fs::lchown(&b, Some(9), Some(4321)).unwrap();
        let n = reown_tree(dir.path(), (4321, 4321), (1234, 1235)).unwrap();
        assert_eq!(n, 4);
        let ids = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(ids(dir.path()), (1234, 1235));
        assert_eq!(ids(&a), (1234, 7));
        assert_eq!(ids(&b), (9, 1235));
        assert_eq!(
            reown_tree(dir.path(), (4321, 4321), (1234, 1235)).unwrap(),
            0
        );
    }
}
