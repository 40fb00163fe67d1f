//! Building an LLB definition: each op is encoded once, its digest is the sha256 of exactly
//! those bytes (maps are BTreeMaps, so encoding is deterministic), and the definition ends with
//! the terminal op that names the result.

use std::collections::{BTreeMap, HashSet};

use prost::Message;
use sha2::{Digest, Sha256};

use super::proto::pb;

/// Where files the client supplies (the runtime binaries, the build context) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFiles {
    /// A local image of the Docker engine, which Docker's embedded BuildKit sees.
    Image(String),
    /// A directory offered in the build's session (a standalone buildkitd).
    Session {
        /// The directory's name in the session.
        name: String,
        /// A hash of its content: buildkitd updates an earlier transfer under the same key by
        /// comparing sizes and times only, so a new content gets a new key (a fresh transfer).
        content: String,
    },
}

/// One output of an op: what the next op builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    digest: String,
    index: i64,
}

impl State {
    /// The empty filesystem (BuildKit's scratch): file ops on it have no input.
    pub fn scratch() -> State {
        State {
            digest: String::new(),
            index: 0,
        }
    }

    /// Whether this is [`State::scratch`].
    pub fn is_scratch(&self) -> bool {
        self.digest.is_empty()
    }

    fn input(&self) -> pb::Input {
        pb::Input {
            digest: self.digest.clone(),
            index: self.index,
        }
    }

    /// The op digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

mod files;
pub use files::Files;

/// A directory for [`Llb::mkdirs`]: path, mode, owner (uid, gid).
pub type DirSpec<'a> = (&'a str, i32, Option<(u32, u32)>);

/// A cache mount for [`Llb::run`].
#[derive(Debug, Clone)]
pub struct CacheMount {
    /// Where it is mounted.
    pub dest: String,
    /// Cache id, shared by every build that uses it.
    pub id: String,
}

/// A read-only bind mount of another state into an exec.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The state to mount.
    pub from: State,
    /// The path inside it to mount ("/" for all of it).
    pub selector: String,
    /// Where it appears.
    pub dest: String,
}

fn chown(owner: Option<(u32, u32)>) -> Option<pb::ChownOpt> {
    owner.map(|(u, g)| pb::ChownOpt {
        user: Some(pb::UserOpt {
            user: Some(pb::user_opt::User::ById(u)),
        }),
        group: Some(pb::UserOpt {
            user: Some(pb::user_opt::User::ById(g)),
        }),
    })
}

/// An LLB graph under construction.
#[derive(Default)]
pub struct Llb {
    ops: Vec<(String, Vec<u8>)>,
    seen: HashSet<String>,
    metadata: BTreeMap<String, pb::OpMetadata>,
    /// Mounted into every exec added after [`Llb::bind_in_every_exec`].
    every_exec: Vec<Bind>,
}

fn platform() -> Option<pb::Platform> {
    Some(pb::Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
    })
}

/// `debian:bookworm` → `docker.io/library/debian:bookworm`, as BuildKit expects.
pub fn normalize_image(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t.to_string()),
        _ => (reference, "latest".to_string()),
    };
    let first = name.split('/').next().unwrap_or("");
    let qualified = if first.contains('.') || first.contains(':') || first == "localhost" {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{qualified}:{tag}")
}

impl Llb {
    fn add(&mut self, op: pb::Op, description: &str) -> State {
        let bytes = op.encode_to_vec();
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        if self.seen.insert(digest.clone()) {
            self.ops.push((digest.clone(), bytes));
            let mut meta = pb::OpMetadata::default();
            meta.description
                .insert("llb.customname".into(), description.into());
            self.metadata.insert(digest.clone(), meta);
        }
        State { digest, index: 0 }
    }

    /// An image from the local store or a registry.
    pub fn image(&mut self, reference: &str) -> State {
        let id = normalize_image(reference);
        self.add(
            pb::Op {
                inputs: vec![],
                op: Some(pb::op::Op::Source(pb::SourceOp {
                    identifier: format!("docker-image://{id}"),
                    attrs: BTreeMap::new(),
                })),
                platform: platform(),
            },
            &format!("image {id}"),
        )
    }

    /// A directory the client offers in its build session (`local://NAME`, a standalone
    /// buildkitd), keyed by its content hash. No session id in the op: the build's session is
    /// used, so the digest is the same for every build of the same program and files.
    pub fn local(&mut self, name: &str, content: &str) -> State {
        let key = format!("{name}-{content}");
        let attrs = BTreeMap::from([("local.sharedkeyhint".to_string(), key)]);
        self.add(
            pb::Op {
                inputs: vec![],
                op: Some(pb::op::Op::Source(pb::SourceOp {
                    identifier: format!("local://{name}"),
                    attrs,
                })),
                platform: platform(),
            },
            &format!("local files {name}"),
        )
    }

    /// Files the client supplies: an engine-local image or a session directory.
    pub fn client_files(&mut self, files: &ClientFiles) -> State {
        match files {
            ClientFiles::Image(reference) => self.image(reference),
            ClientFiles::Session { name, content } => self.local(name, content),
        }
    }

    /// Mounts `bind` (read-only) into every exec added from now on: what each step needs but
    /// the image must not keep, such as the host's CA bundle.
    pub fn bind_in_every_exec(&mut self, bind: Bind) {
        self.every_exec.push(bind);
    }

    /// Runs `args` on top of `root` (as `user`, in `cwd`), with cache mounts.
    pub fn run(
        &mut self,
        root: &State,
        args: Vec<String>,
        env: Vec<String>,
        user: &str,
        caches: &[CacheMount],
        name: &str,
    ) -> State {
        self.run_with_binds(root, args, env, user, caches, &[], name)
    }

    /// [`Llb::run`] with read-only bind mounts of other states (e.g. the build context).
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_binds(
        &mut self,
        root: &State,
        args: Vec<String>,
        env: Vec<String>,
        user: &str,
        caches: &[CacheMount],
        binds: &[Bind],
        name: &str,
    ) -> State {
        let mut mounts = vec![pb::Mount {
            input: 0,
            dest: "/".into(),
            output: 0,
            ..Default::default()
        }];
        let mut inputs = vec![root.input()];
        let every_exec = self.every_exec.clone();
        for b in binds.iter().chain(&every_exec) {
            mounts.push(pb::Mount {
                input: inputs.len() as i64,
                selector: b.selector.clone(),
                dest: b.dest.clone(),
                output: -1,
                readonly: true,
                mount_type: pb::MountType::Bind as i32,
                ..Default::default()
            });
            inputs.push(b.from.input());
        }
        for c in caches {
            mounts.push(pb::Mount {
                input: -1,
                dest: c.dest.clone(),
                output: -1,
                mount_type: pb::MountType::Cache as i32,
                cache_opt: Some(pb::CacheOpt {
                    id: c.id.clone(),
                    sharing: pb::CacheSharingOpt::Locked as i32,
                }),
                ..Default::default()
            });
        }
        self.add(
            pb::Op {
                inputs,
                op: Some(pb::op::Op::Exec(pb::ExecOp {
                    meta: Some(pb::Meta {
                        args,
                        env,
                        cwd: "/".into(),
                        user: user.into(),
                    }),
                    mounts,
                    network: pb::NetMode::Unset as i32,
                })),
                platform: platform(),
            },
            name,
        )
    }

    /// Writes a file (creating its parent directories), owned by `owner` (uid, gid).
    pub fn mkfile(
        &mut self,
        root: &State,
        path: &str,
        data: &[u8],
        mode: i32,
        owner: Option<(u32, u32)>,
    ) -> State {
        let mut files = self.files(root);
        files.mkfile(path, data, mode, owner);
        files.finish(&format!("write {path}"))
    }

    /// Creates directories in order, each with its mode and owner (parents must come first):
    /// layers built on scratch give their directories the metadata the image expects.
    pub fn mkdirs(&mut self, root: &State, dirs: &[DirSpec]) -> State {
        let mut files = self.files(root);
        for dir in dirs {
            files.mkdir(*dir, false);
        }
        let names: Vec<&str> = dirs.iter().map(|d| d.0).collect();
        files.finish(&format!("mkdir {}", names.join(" ")))
    }

    /// The files of `layers` on top of each other, later ones winning (BuildKit >= 0.10's
    /// MergeOp: each input is built on its own, so their caches and runs are independent).
    pub fn merge(&mut self, layers: &[State], name: &str) -> State {
        let merge = pb::MergeOp {
            inputs: (0..layers.len() as i64)
                .map(|input| pb::MergeInput { input })
                .collect(),
        };
        self.add(
            pb::Op {
                inputs: layers.iter().map(State::input).collect(),
                op: Some(pb::op::Op::Merge(merge)),
                platform: platform(),
            },
            name,
        )
    }

    /// Copies `src` from `from` to `dest` on top of `root`, owned by `owner` (uid, gid) when
    /// given.
    pub fn copy(
        &mut self,
        root: &State,
        from: &State,
        src: &str,
        dest: &str,
        mode: Option<i32>,
        owner: Option<(u32, u32)>,
    ) -> State {
        let mut files = self.files(root);
        files.copy(from, src, dest, mode, owner);
        files.finish(&format!("copy {src} -> {dest}"))
    }

    /// A file downloaded over HTTP(S) by BuildKit, checked against `checksum` (an OCI digest)
    /// when given, as `/<filename>` of the resulting state.
    pub fn http(&mut self, url: &str, checksum: Option<&str>, filename: Option<&str>) -> State {
        let mut attrs = BTreeMap::new();
        if let Some(c) = checksum {
            attrs.insert("http.checksum".to_string(), c.to_string());
        }
        if let Some(f) = filename {
            attrs.insert("http.filename".to_string(), f.to_string());
        }
        self.add(
            pb::Op {
                inputs: vec![],
                op: Some(pb::op::Op::Source(pb::SourceOp {
                    identifier: url.to_string(),
                    attrs,
                })),
                platform: platform(),
            },
            &format!("download {url}"),
        )
    }

    /// The definition whose result is `result`.
    pub fn definition(mut self, result: &State) -> pb::Definition {
        let terminal = pb::Op {
            inputs: vec![result.input()],
            op: None,
            platform: None,
        };
        let bytes = terminal.encode_to_vec();
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        self.ops.push((digest, bytes));
        pb::Definition {
            def: self.ops.into_iter().map(|(_, b)| b).collect(),
            metadata: self.metadata,
        }
    }
}

/// A readable listing of a definition: one line per op with its digest, for `envd debug llb`.
pub fn describe(def: &pb::Definition) -> String {
    let mut out = String::new();
    for (short, inputs, what) in summarize(def) {
        out.push_str(&format!("{short} <- [{}] {what}\n", inputs.join(", ")));
    }
    out
}

/// The definition as a Graphviz graph (`envd debug llb --dot`): one node per op, edges from
/// each input to the op that uses it.
pub fn describe_dot(def: &pb::Definition) -> String {
    let mut out =
        String::from("digraph llb {\n  rankdir=TB;\n  node [shape=box, fontname=monospace];\n");
    for (short, inputs, what) in summarize(def) {
        let label: String = what.chars().take(120).collect();
        out.push_str(&format!(
            "  \"{short}\" [label={:?}];\n",
            format!("{short}\n{label}")
        ));
        for i in inputs {
            out.push_str(&format!("  \"{i}\" -> \"{short}\";\n"));
        }
    }
    out.push_str("}\n");
    out
}

/// Each op as (short digest, its inputs' short digests, what it does).
fn summarize(def: &pb::Definition) -> Vec<(String, Vec<String>, String)> {
    let mut out = Vec::new();
    for bytes in &def.def {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let Ok(op) = pb::Op::decode(bytes.as_slice()) else {
            continue;
        };
        let short = &digest[7..19];
        let inputs: Vec<String> = op
            .inputs
            .iter()
            .map(|i| i.digest[7..19].to_string())
            .collect();
        let what = match &op.op {
            Some(pb::op::Op::Source(s)) => format!("source {}", s.identifier),
            Some(pb::op::Op::Exec(e)) => {
                let meta = e.meta.clone().unwrap_or_default();
                let caches: Vec<String> = e
                    .mounts
                    .iter()
                    .filter_map(|m| m.cache_opt.as_ref().map(|c| format!("{}={}", m.dest, c.id)))
                    .collect();
                let binds: Vec<String> = e
                    .mounts
                    .iter()
                    .filter(|m| m.input > 0 && m.mount_type == pb::MountType::Bind as i32)
                    .map(|m| {
                        format!(
                            "{}<-{}{}",
                            m.dest,
                            m.selector,
                            if m.readonly { " ro" } else { "" }
                        )
                    })
                    .collect();
                format!(
                    "exec user={} {:?}{}{}",
                    if meta.user.is_empty() {
                        "root"
                    } else {
                        &meta.user
                    },
                    meta.args,
                    if caches.is_empty() {
                        String::new()
                    } else {
                        format!(" caches[{}]", caches.join(", "))
                    },
                    if binds.is_empty() {
                        String::new()
                    } else {
                        format!(" binds[{}]", binds.join(", "))
                    }
                )
            }
            Some(pb::op::Op::File(f)) => {
                let acts: Vec<String> = f
                    .actions
                    .iter()
                    .filter_map(|a| match &a.action {
                        Some(pb::file_action::Action::Mkfile(m)) => Some(format!(
                            "mkfile {} ({} bytes, {:o})",
                            m.path,
                            m.data.len(),
                            m.mode
                        )),
                        Some(pb::file_action::Action::Mkdir(m)) => {
                            Some(format!("mkdir {}", m.path))
                        }
                        Some(pb::file_action::Action::Copy(c)) => {
                            Some(format!("copy {} -> {}", c.src, c.dest))
                        }
                        None => None,
                    })
                    .collect();
                format!("file {}", acts.join("; "))
            }
            Some(pb::op::Op::Merge(m)) => format!("merge {} layers", m.inputs.len()),
            None => "result".to_string(),
        };
        out.push((short.to_string(), inputs, what));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_normalized() {
        assert_eq!(
            normalize_image("debian:bookworm"),
            "docker.io/library/debian:bookworm"
        );
        assert_eq!(
            normalize_image("envd-rs/runtime:abc"),
            "docker.io/envd-rs/runtime:abc"
        );
        assert_eq!(
            normalize_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(normalize_image("ubuntu"), "docker.io/library/ubuntu:latest");
    }

    #[test]
    fn digests_are_deterministic_and_chain() {
        let build = || {
            let mut l = Llb::default();
            let base = l.image("debian:bookworm");
            let s = l.run(
                &base,
                vec!["true".into()],
                vec![],
                "",
                &[CacheMount {
                    dest: "/var/cache/apt".into(),
                    id: "apt".into(),
                }],
                "run",
            );
            let s = l.mkfile(&s, "/etc/x/y", b"hi", 0o644, Some((1000, 1000)));
            l.definition(&s)
        };
        let (a, b) = (build(), build());
        assert_eq!(a, b);
        assert_eq!(a.def.len(), 4);
        let text = describe(&a);
        assert!(
            text.contains("source docker-image://docker.io/library/debian:bookworm"),
            "{text}"
        );
        assert!(text.contains("caches[/var/cache/apt=apt]"), "{text}");
        assert!(text.contains("mkfile /etc/x/y"), "{text}");
    }
}
